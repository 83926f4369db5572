"""Who is behind an address or a network namespace: Docker containers,
Kubernetes pods (containerd/CRI), named namespaces (ip netns), processes.

Sources, all read from the host's own state (no runtime API calls):
- Docker: /var/lib/docker/containers/<id>/config.v2.json (Name, State.Pid,
  NetworkSettings.Networks.*.IPAddress / GlobalIPv6Address);
- containerd/CRI: /run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/
  config.json (OCI spec: io.kubernetes.cri.* annotations, the network
  namespace path) and init.pid;
- named namespaces: /run/netns/<name>;
- any process: /proc/<pid>/ns/net, cgroup (docker-<id>.scope,
  cri-containerd-<id>.scope, /docker/<id>) and comm.
Addresses inside a namespace are listed with `ip -j addr` in it.
Refreshed in the background (Attribution.start); look-ups never block.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field

DOCKER = "/var/lib/docker/containers"
CRI = "/run/containerd/io.containerd.runtime.v2.task/k8s.io"
_CGROUP_ID = re.compile(r"(?:docker-|cri-containerd-|crio-|/docker/|/kubepods[^ ]*/)([0-9a-f]{64})")


@dataclass
class Names:
    by_ip: dict[str, str] = field(default_factory=dict)
    by_netns: dict[int, str] = field(default_factory=dict)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _state_files(root: str, name: str):
    """(id, parsed JSON) of root/<id>/<name> for every runtime state directory."""
    try:
        ids = os.listdir(root)
    except OSError:
        return
    for cid in ids:
        data = _read_json(os.path.join(root, cid, name))
        if data:
            yield cid, data


def docker(root: str = DOCKER, proc: str = "/proc") -> list[dict]:
    """[{id, name, ips, netns}] of Docker containers (running ones get a netns)."""
    out = []
    for cid, cfg in _state_files(root, "config.v2.json"):
        nets = (cfg.get("NetworkSettings") or {}).get("Networks") or {}
        ips = [ip for n in nets.values() for ip in (n.get("IPAddress"), n.get("GlobalIPv6Address")) if ip]
        pid = (cfg.get("State") or {}).get("Pid") or 0
        out.append({"id": cid, "name": (cfg.get("Name") or cid[:12]).lstrip("/"), "ips": ips,
                    "netns": _inode(f"{proc}/{pid}/ns/net") if pid else None})
    return out


def cri(root: str = CRI) -> list[dict]:
    """[{id, name, netns_path}] of Kubernetes pod sandboxes under containerd."""
    out = []
    for cid, spec in _state_files(root, "config.json"):
        ann = spec.get("annotations") or {}
        if ann.get("io.kubernetes.cri.container-type") not in (None, "sandbox"):
            continue
        pod = ann.get("io.kubernetes.cri.sandbox-name")
        ns = ann.get("io.kubernetes.cri.sandbox-namespace")
        name = f"{ns}/{pod}" if pod and ns else pod or cid[:12]
        path = None
        for n in (spec.get("linux") or {}).get("namespaces") or []:
            if n.get("type") == "network":
                path = n.get("path")
        out.append({"id": cid, "name": name, "netns_path": path})
    return out


def processes(proc: str = "/proc") -> dict[int, dict]:
    """{netns inode: {pid, comm, container_id}} for the first process of each namespace."""
    out: dict[int, dict] = {}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        ino = _inode(f"{proc}/{pid}/ns/net")
        if ino is None or ino in out:
            continue
        try:
            with open(f"{proc}/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"{proc}/{pid}/cgroup") as f:
                m = _CGROUP_ID.search(f.read())
        except OSError:
            continue
        out[ino] = {"pid": pid, "comm": comm, "container_id": m.group(1) if m else None}
    return out


def addresses(netns_path: str) -> list[str]:
    """Global addresses configured in a namespace."""
    try:
        r = subprocess.run(["nsenter", f"--net={netns_path}", "ip", "-j", "addr"],
                           capture_output=True, text=True, timeout=5)
        data = json.loads(r.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            ip = a.get("local")
            if ip and a.get("scope") == "global":
                out.append(ip)
    return out


def collect(docker_root: str = DOCKER, cri_root: str = CRI, proc: str = "/proc",
            run_netns: str = "/run/netns", list_addresses=addresses) -> Names:
    """One full look at the host (seconds on busy hosts: run it in the background)."""
    names = Names()
    # the host's (initial) namespace: kthreadd's, pid 2, is always there
    host = _inode(f"{proc}/2/ns/net") or _inode(f"{proc}/1/ns/net")
    paths: dict[int, str] = {}
    # weakest first: processes, then named namespaces, then runtimes
    procs = processes(proc)
    for ino, p in procs.items():
        if ino != host:
            names.by_netns[ino] = f"pid {p['pid']} ({p['comm']})"
            paths.setdefault(ino, f"{proc}/{p['pid']}/ns/net")
    if host is not None:
        names.by_netns[host] = "host"
    try:
        for n in os.listdir(run_netns):
            ino = _inode(os.path.join(run_netns, n))
            if ino is not None:
                names.by_netns[ino] = n
                paths[ino] = os.path.join(run_netns, n)
    except OSError:
        pass
    for c in cri(cri_root):
        ino = _inode(c["netns_path"]) if c["netns_path"] else None
        if ino is not None:
            names.by_netns[ino] = c["name"]
            paths[ino] = c["netns_path"]
    dockers = docker(docker_root, proc)
    by_id = {d["id"]: d["name"] for d in dockers}
    for ino, p in procs.items():
        if p["container_id"] in by_id:
            names.by_netns[ino] = by_id[p["container_id"]]
    for ino, path in paths.items():
        if ino == host:
            continue
        for ip in list_addresses(path):
            names.by_ip.setdefault(_norm(ip), names.by_netns[ino])
    for d in dockers:                    # Docker knows its IPs even without entering
        for ip in d["ips"]:
            names.by_ip[_norm(ip)] = d["name"]
        if d["netns"]:
            names.by_netns[d["netns"]] = d["name"]
    return names


def _norm(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


class Attribution:
    """Cached names, refreshed by a background thread; look-ups never block."""

    def __init__(self, interval: float = 10.0, **collect_args):
        self.names = Names()
        self.interval = interval
        self._args = collect_args
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        try:
            self.names = collect(**self._args)
        except Exception:       # attribution is best effort; never break a view
            pass

    def start(self) -> "Attribution":
        self._thread = threading.Thread(target=self._run, daemon=True, name="attribution")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def ip(self, addr: str) -> str | None:
        return self.names.by_ip.get(addr)

    def netns(self, inode: int) -> str | None:
        return self.names.by_netns.get(inode)
