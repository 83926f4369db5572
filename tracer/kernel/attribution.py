"""Who is behind an address or a network namespace: Docker and Podman
containers, Kubernetes pods (containerd/CRI), named namespaces (ip netns),
processes.

Sources, all read from the host's own files (no runtime API calls, no
daemon asked anything):
- Docker: <data root>/containers/<id>/config.v2.json (Name, State.Running,
  State.Pid, NetworkSettings.Networks.*.IPAddress / GlobalIPv6Address) and
  hostconfig.json beside it (NetworkMode: host, container:<id>). Data roots: /var/lib/docker, `data-root` in
  /etc/docker/daemon.json, and each running dockerd's --data-root (or the
  `data-root` of its --config-file);
- containerd/CRI: <state>/io.containerd.runtime.v2.task/k8s.io/<id>/
  config.json (OCI spec: the io.kubernetes.cri.* annotations the CRI plugin
  writes, the network namespace path). State dirs: /run/containerd and each
  running containerd's --state (or the `state` of its --config);
- Podman (rootful, 4.x): <graph root>/overlay-containers/containers.json
  (names; `podman rename` rewrites it) and <graph root>/overlay-containers/
  <id>/userdata/config.json (OCI spec, the network namespace in /run/netns).
  Graph roots: /var/lib/containers/storage, `graphroot` in
  /etc/containers/storage.conf, and each running conmon's bundle (-b).
  Rootless Podman: the user's graph root (vfs-containers too), found from
  that user's conmon; a running container's namespace is that of its
  conmon's first child (the config.json path is a bind mount in the
  user's mount namespace only), taken only from a conmon running as the
  state's owner; another user's state names only namespaces inside a user
  namespace, and its addresses rank lowest;
- published ports that only DNAT rules tell (Podman's netavark, CNI
  portmap, kube-proxy): iptables-save -t nat in the host's namespace and
  in root conmon/containerd/kube-proxy namespaces (tracer/core/dnat.py);
- named namespaces: /run/netns/<name>;
- any process: /proc/<pid>/ns/net, cgroup and comm.
Addresses of a namespace whose runtime does not write them down (CRI pods,
Podman, named namespaces) are listed with `ip -j addr` inside it (cached
per namespace inode).

Who may claim an address, strongest first: an address the runtime wrote
in its own state (Docker); an address listed in a runtime's namespace
(pod sandbox, Podman); one listed in a named namespace; one listed in a
process's namespace. A namespace owned by a user namespace other than the
host's (`unshare -rn`: any user can make one and give it any address)
ranks lowest, so it never takes another container's or pod's address.

Host-network containers and pods share the host's namespace: it stays
"host". `--network container:X` containers share X's: it stays X's name.
Every file is read on its own: a malformed one (bad JSON, wrong types,
nesting too deep, too big) is skipped and counted, never the whole look.

Refreshed in the background (Attribution.start), every `interval` seconds
and when a look-up misses (a container that just started), at most
every 10 times the last refresh's duration (0.25 to 2 s: at most a tenth
of a CPU while unknown addresses keep coming); look-ups never block. Names of containers that are gone
stay known for KEEP_S seconds (a drop or a capture record that arrives
after its container exited keeps its name), at most KEEP_MAX addresses
and namespaces (the oldest forgotten first).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass, field

from tracer.core import dnat
from tracer.kernel import host

DOCKER = "/var/lib/docker"
DOCKER_CONF = "/etc/docker/daemon.json"
CONTAINERD_STATE = "/run/containerd"
PODMAN = "/var/lib/containers/storage"
PODMAN_CONF = "/etc/containers/storage.conf"
PODMAN_DRIVERS = ("overlay", "vfs")     # <graph root>/<driver>-containers/containers.json
_BUNDLE = re.compile(r"/(?:overlay|vfs)-containers/")
MAX_ROOTS = 64               # graph roots taken from conmon command lines (any user runs conmon)
CRI_NS = "io.containerd.runtime.v2.task/k8s.io"
MAX_STATE = 4 << 20          # bytes: a runtime state file bigger than this is skipped
MAX_NAME = 200               # characters kept of a name
KEEP_S = 600.0               # names of exited containers are kept this long
KEEP_MAX = 16384             # ... for at most this many addresses (and namespaces)
MISS_GAP_S = (0.25, 2.0)     # a look-up miss refreshes at most this often: 10 times the
                             # last refresh's time within these bounds (<= 10 % of a CPU)
ADDR_TTL_S = 60.0            # a namespace's listed addresses are cached this long
RULES_TTL_S = 30.0           # a namespace's DNAT rules (iptables-save -t nat) are read at most this often,
RULES_COST_FACTOR = 25       # ... and at most every 25 times the last read's cost (a node with 100,000
                             # nat rules: seconds of parsing; at most 1/25 of a core)
MAX_RULES_TEXT = 64 << 20    # bytes of iptables-save output read at most
RULE_WRITERS = ("conmon", "containerd", "kube-proxy")   # root processes whose namespace holds DNAT rules
# linux/nsfs.h: #define NS_GET_USERNS _IO(NSIO, 0x1), NSIO 0xb7
NS_GET_USERNS = 0xB701
_CGROUP_ID = re.compile(r"(?:docker-|cri-containerd-|crio-|libpod-|/docker/|/kubepods[^ ]*/)([0-9a-f]{64})")
_CTL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ANN = "io.kubernetes.cri."

# ranks of a claim on an address (see the module docstring)
R_FOREIGN, R_PROCESS, R_NAMED, R_RUNTIME_NS, R_DECLARED = range(5)


@dataclass
class Names:
    by_ip: dict[str, str] = field(default_factory=dict)
    by_netns: dict[int, str] = field(default_factory=dict)
    # name -> {runtime, namespace, pod, container} (Kubernetes-style labels)
    meta: dict[str, dict] = field(default_factory=dict)
    # published ports: (netns inode of the daemon, proto, host port) ->
    # [(host address, "" for any; the publishing container's name)]
    published: dict[tuple, list] = field(default_factory=dict)
    skipped: int = 0                  # state files that could not be used


def clean(s) -> str | None:
    """A name fit for a terminal and a metric label: a str, valid UTF-8 (a
    lone surrogate or undecodable byte becomes U+FFFD), no control
    characters, at most MAX_NAME characters; None for anything else."""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    if not isinstance(s, str) or not s:
        return None
    s = s.encode("utf-8", "replace").decode("utf-8", "replace")
    s = _CTL.sub("\ufffd", s)[:MAX_NAME].strip()
    return s or None


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def _l(x) -> list:
    return x if isinstance(x, list) else []


def _read_json(path: str, skipped: list | None = None):
    """Parsed JSON of a file; None (counted in skipped) if it is missing,
    too big, malformed or nested too deep."""
    try:
        with open(path, "rb") as f:
            # (a read of MAX_STATE + 1 would allocate that much for every file)
            size = os.fstat(f.fileno()).st_size
            raw = f.read(min(size, MAX_STATE) + 1) if size else f.read(MAX_STATE + 1)
    except OSError:
        return None
    try:
        if len(raw) > MAX_STATE:
            raise ValueError("too big")
        return json.loads(raw)
    except (ValueError, RecursionError, MemoryError):
        if skipped is not None:
            skipped.append(path)
        return None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except (OSError, ValueError):
        return None


def userns_of(path: str) -> int | None:
    """Inode of the user namespace owning the network namespace at path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        u = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            return os.fstat(u).st_ino
        finally:
            os.close(u)
    except OSError:
        return None
    finally:
        os.close(fd)


def _ids(root: str) -> list[str]:
    try:
        return [c for c in os.listdir(root) if not c.startswith(".")]
    except OSError:
        return []


def _flag(argv: list[str], *names: str) -> str | None:
    """The value of --name X / --name=X in a command line."""
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def _toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return _d(tomllib.loads(f.read(MAX_STATE).decode("utf-8", "replace")))
    except (OSError, ValueError, RecursionError):
        return {}


# --- the runtimes' state ------------------------------------------------------
def _docker_root(argv: list[str], conf: str) -> str:
    """The data root a dockerd command line uses."""
    r = _flag(argv, "--data-root", "-g")
    if r:
        return r
    d = _d(_read_json(_flag(argv, "--config-file") or conf))
    r = d.get("data-root") or d.get("graph")
    return r if isinstance(r, str) and r else DOCKER


def docker_roots(daemons: list, conf: str = DOCKER_CONF) -> list[str]:
    """Docker data roots: the default, daemon.json's, each running dockerd's."""
    roots = [DOCKER]
    d = _d(_read_json(conf))
    r = d.get("data-root") or d.get("graph")
    if isinstance(r, str):
        roots.append(r)
    roots += [_docker_root(x[1], conf) for x in daemons if x[0] == "dockerd"]
    return list(dict.fromkeys(roots))


def docker_netns(daemons: list, conf: str = DOCKER_CONF) -> dict[str, int]:
    """{data root: network namespace inode of the dockerd using it} (its
    published ports are DNATed in that namespace)."""
    return {_docker_root(x[1], conf): x[2] for x in daemons
            if x[0] == "dockerd" and len(x) > 2 and x[2] is not None}


def _ports(cfg: dict, host_cfg: dict) -> list[tuple[str, str, int]]:
    """[(proto, host address or "", host port)] a container publishes:
    NetworkSettings.Ports (what dockerd bound, ports it chose included),
    else HostConfig.PortBindings (what was asked)."""
    bound = _d(_d(cfg.get("NetworkSettings")).get("Ports"))
    if not bound:
        bound = _d(host_cfg.get("PortBindings") or _d(cfg.get("HostConfig")).get("PortBindings"))
    out = []
    for spec, binds in list(bound.items())[:4096]:
        m = re.fullmatch(r"(\d{1,5})/(tcp|udp|sctp)", spec) if isinstance(spec, str) else None
        if m is None:
            continue
        for b in _l(binds)[:64]:
            b = _d(b)
            hp, hip = b.get("HostPort"), b.get("HostIp") or ""
            try:
                port = int(hp)
            except (TypeError, ValueError):
                continue
            if not 0 < port < 65536 or not isinstance(hip, str):
                continue
            hip = "" if hip in ("", "0.0.0.0", "::") else _norm(hip)
            if hip is not None:
                out.append((m.group(2), hip, port))
    return list(dict.fromkeys(out))


def cri_roots(daemons: list) -> list[str]:
    """containerd's k8s.io task dirs: the default, each running containerd's."""
    states = [CONTAINERD_STATE]
    for comm, argv, *_ in daemons:
        if comm != "containerd":
            continue
        s = _flag(argv, "--state")
        if s is None and (c := _flag(argv, "--config", "-c")):
            s = _toml(c).get("state")
        if isinstance(s, str):
            states.append(s)
    return [os.path.join(s, CRI_NS) for s in dict.fromkeys(states)]


def podman_roots(daemons: list, conf: str = PODMAN_CONF) -> list[str]:
    """Podman graph roots: the default, storage.conf's, each running conmon's."""
    roots = [PODMAN]
    g = _d(_toml(conf).get("storage")).get("graphroot")
    if isinstance(g, str):
        roots.append(g)
    for comm, argv, *_ in daemons:
        b = _flag(argv, "-b", "--bundle") if comm == "conmon" else None
        if b and _BUNDLE.search(b):
            roots.append(_BUNDLE.split(b)[0])
    return list(dict.fromkeys(roots))[:MAX_ROOTS + 2]


def docker(root: str = DOCKER, proc: str = "/proc", skipped: list | None = None) -> list[dict]:
    """[{id, name, ips, netns, mode, ports}] of a Docker data root's running
    containers (mode: HostConfig.NetworkMode; ports: _ports())."""
    out = []
    base = os.path.join(root, "containers")
    for cid in _ids(base):
        cfg = _read_json(os.path.join(base, cid, "config.v2.json"), skipped)
        try:
            if not isinstance(cfg, dict):
                continue
            state = _d(cfg.get("State"))
            if state.get("Running") is not True:
                continue
            nets = _d(_d(cfg.get("NetworkSettings")).get("Networks"))
            ips = [ip for n in nets.values() for k in ("IPAddress", "GlobalIPv6Address")
                   for ip in [_d(n).get(k)] if isinstance(ip, str) and ip]
            pid = state.get("Pid")
            # HostConfig lives in hostconfig.json beside config.v2.json
            host_cfg = _d(_read_json(os.path.join(base, cid, "hostconfig.json"), skipped))
            mode = host_cfg.get("NetworkMode") or _d(cfg.get("HostConfig")).get("NetworkMode")
            if not isinstance(mode, str) or not mode:
                mode = "host" if "host" in nets else ""
            out.append({"id": cid, "name": (clean(cfg.get("Name")) or cid[:12]).lstrip("/") or cid[:12],
                        "ips": ips, "mode": mode, "ports": _ports(cfg, host_cfg),
                        "netns": _inode(f"{proc}/{pid}/ns/net")
                        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None})
        except (TypeError, ValueError, AttributeError):
            if skipped is not None:
                skipped.append(cid)
    return out


def _netns_path(spec: dict) -> tuple[bool, str | None]:
    """(has its own network namespace, its path) of an OCI spec."""
    for n in _l(_d(spec.get("linux")).get("namespaces")):
        if _d(n).get("type") == "network":
            p = n.get("path")
            return True, p if isinstance(p, str) and p else None
    return False, None


def cri(root: str, skipped: list | None = None) -> list[dict]:
    """[{id, kind, name, namespace, pod, container, sandbox, own_netns,
    netns_path}] of a containerd k8s.io task dir: pod sandboxes and their
    app containers."""
    out = []
    for cid in _ids(root):
        spec = _read_json(os.path.join(root, cid, "config.json"), skipped)
        if not isinstance(spec, dict):
            continue
        ann = _d(spec.get("annotations"))
        kind = ann.get(_ANN + "container-type")
        if kind not in ("sandbox", "container"):
            continue
        ns, pod = clean(ann.get(_ANN + "sandbox-namespace")), clean(ann.get(_ANN + "sandbox-name"))
        own, path = _netns_path(spec)
        out.append({"id": cid, "kind": kind, "namespace": ns, "pod": pod,
                    "name": f"{ns}/{pod}" if pod and ns else pod or cid[:12],
                    "container": clean(ann.get(_ANN + "container-name")),
                    "sandbox": ann.get(_ANN + "sandbox-id") if kind == "container" else cid,
                    "own_netns": own, "netns_path": path})
    return out


def podman(root: str, skipped: list | None = None) -> list[dict]:
    """[{id, name, own_netns, netns_path}] of a Podman graph root (the
    overlay driver's containers, else the vfs driver's)."""
    out = []
    for driver in PODMAN_DRIVERS:
        base = os.path.join(root, f"{driver}-containers")
        if os.path.isdir(base):
            out += _podman_listed(base, skipped)
    return out


def _podman_listed(base: str, skipped: list | None) -> list[dict]:
    listed = _read_json(os.path.join(base, "containers.json"), skipped)
    out = []
    for c in _l(listed):
        c = _d(c)
        cid = c.get("id")
        if not isinstance(cid, str) or not re.fullmatch(r"[0-9a-f]{12,128}", cid):
            continue
        spec = _read_json(os.path.join(base, cid, "userdata", "config.json"), skipped)
        if not isinstance(spec, dict) or _d(spec.get("annotations")).get("io.container.manager") != "libpod":
            continue
        names = _l(c.get("names"))
        own, path = _netns_path(spec)
        out.append({"id": cid, "name": clean(names[0] if names else None) or cid[:12],
                    "own_netns": own, "netns_path": path})
    return out


def processes(proc: str = "/proc", daemons: tuple = ("dockerd", "containerd", "conmon", "kube-proxy")
              ) -> tuple[dict[int, dict], list[tuple]]:
    """({netns inode: {pid, comm, container_id}} for the first process of
    each namespace, [(comm, argv, netns inode, pid)] of the runtime daemons)."""
    out: dict[int, dict] = {}
    found: list[tuple] = []
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out, found
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/comm", "rb") as f:
                comm = clean(f.read(256).strip()) or "?"
            ino = _inode(f"{proc}/{pid}/ns/net")
            if comm in daemons:
                with open(f"{proc}/{pid}/cmdline", "rb") as f:
                    found.append((comm, [a.decode("utf-8", "replace")
                                         for a in f.read(65536).split(b"\0")], ino, pid))
            if ino is None or ino in out:
                continue
            with open(f"{proc}/{pid}/cgroup", "rb") as f:
                m = _CGROUP_ID.search(f.read(65536).decode("ascii", "replace"))
        except OSError:
            continue
        out[ino] = {"pid": pid, "comm": comm, "container_id": m.group(1) if m else None}
    return out, found


def conmon_children(daemons: list, proc: str = "/proc") -> dict[tuple[str, int], int]:
    """{(container id, the uid conmon runs as): its process' pid}: each
    conmon's (-c) first child (conmon is the container's subreaper), read
    from /proc/PID/task/PID/children. A rootless container's namespace is
    bind-mounted in its user's mount namespace only: its path in the
    container's config.json means nothing from here, the process' does."""
    out: dict[tuple[str, int], int] = {}
    for comm, argv, *rest in daemons:
        if comm != "conmon" or len(rest) < 2:
            continue
        cid, pid = _flag(argv, "-c", "--cid"), rest[1]
        if not cid or not re.fullmatch(r"[0-9a-f]{12,128}", cid):
            continue
        try:
            with open(f"{proc}/{pid}/task/{pid}/children", "rb") as f:
                kids = f.read(4096).split()
            uid = os.stat(f"{proc}/{pid}").st_uid
        except OSError:
            continue
        if kids and kids[0].isdigit():
            out[(cid, uid)] = int(kids[0])
    return out


def addresses(netns_path: str) -> list[str]:
    """Global addresses configured in a namespace."""
    try:
        r = subprocess.run(["nsenter", f"--net={netns_path}", "ip", "-j", "addr"],
                           capture_output=True, timeout=5)
        data = json.loads(r.stdout or b"[]")
    except (OSError, ValueError, RecursionError, subprocess.TimeoutExpired):
        return []
    out = []
    for link in _l(data):
        for a in _l(_d(link).get("addr_info")):
            ip = _d(a).get("local")
            if isinstance(ip, str) and a.get("scope") == "global":
                out.append(ip)
    return out


def dnat_rules(netns_path: str) -> list[dnat.Dnat]:
    """The published ports of a namespace's DNAT rules (the nat tables of
    both families, listed inside it without creating any: host.rule_commands;
    tracer/core/dnat.py). netns_path is /proc/PID/ns/net."""
    text = []
    here = _inode(netns_path) == _inode("/proc/thread-self/ns/net")
    net = netns_path.rsplit("/ns/net", 1)[0] + "/net"      # /proc/PID/net: that namespace's view
    for _tool, argv in host.rule_commands(("nat",), net=net, with_nft=False):
        # in this process's own namespace without nsenter (CAP_SYS_ADMIN):
        # the exporter's unit has CAP_NET_ADMIN only, which is enough there
        cmd = argv if here else ["nsenter", f"--net={netns_path}", *argv]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text.append(r.stdout[:MAX_RULES_TEXT].decode("utf-8", "replace"))
    return dnat.published("\n".join(text))


def _norm(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


class _Builder:
    """Names being collected: claims on addresses by rank."""

    def __init__(self, host: int | None, host_userns: int | None, userns) -> None:
        self.n = Names()
        self.host = host
        self.host_userns = host_userns
        self.userns = userns
        self.rank: dict[str, int] = {}
        self.paths: dict[int, tuple[str, int]] = {}     # netns -> (path, rank of its addresses)

    def netns(self, ino: int | None, name: str, meta: dict | None = None) -> None:
        if ino is None or ino == self.host:
            return
        self.n.by_netns[ino] = name
        if meta is not None:
            self.n.meta[name] = meta

    def path(self, ino: int | None, path: str, rank: int) -> None:
        if ino is None or ino == self.host:
            return
        if rank > R_FOREIGN and self.host_userns is not None:
            u = self.userns(path)
            if u is not None and u != self.host_userns:
                rank = R_FOREIGN
        if ino not in self.paths or self.paths[ino][1] < rank:
            self.paths[ino] = (path, rank)

    def claim(self, ip: str, name: str, rank: int) -> None:
        ip = _norm(ip)
        if ip is None:
            return
        if self.rank.get(ip, -1) < rank:
            self.n.by_ip[ip] = name
            self.rank[ip] = rank


def collect(docker_root=None, cri_root=None, podman_root=None, proc: str = "/proc",
            run_netns: str = "/run/netns", list_addresses=addresses, cache: dict | None = None,
            docker_conf: str = DOCKER_CONF, podman_conf: str = PODMAN_CONF,
            userns=userns_of, now: float | None = None, list_dnat=dnat_rules,
            rules_cache: dict | None = None) -> Names:
    """One full look at the host (seconds on busy hosts: run it in the
    background). A root given (a path or a list) replaces the discovered
    ones. `cache` ({netns inode: (time, addresses)}) saves listing a
    namespace's addresses again within ADDR_TTL_S; `rules_cache` the same
    for DNAT rules (RULES_TTL_S)."""
    now = time.monotonic() if now is None else now
    skipped: list = []
    procs, daemons = processes(proc)
    host = _inode(f"{proc}/2/ns/net") or _inode(f"{proc}/1/ns/net")
    # the user namespace cttrace runs in (the host's: it runs as root there)
    b = _Builder(host, _inode(f"{proc}/self/ns/user") or _inode(f"{proc}/1/ns/user"), userns)
    # weakest first: processes, then named namespaces, then runtimes
    for ino, p in procs.items():
        b.netns(ino, f"pid {p['pid']} ({p['comm']})")
        b.path(ino, f"{proc}/{p['pid']}/ns/net", R_PROCESS)
    if host is not None:
        b.n.by_netns[host] = "host"
    for n in _ids(run_netns):
        path = os.path.join(run_netns, n)
        ino = _inode(path)
        name = clean(n)
        if name:
            b.netns(ino, name)
            b.path(ino, path, R_NAMED)

    def roots(given, found):
        return [given] if isinstance(given, str) else list(given) if given is not None else found

    # containerd/CRI: pods own their sandbox's namespace; app containers join it
    pods: dict[str, dict] = {}
    pod_netns: set[int] = set()
    apps: list[dict] = []
    for r in roots(cri_root, cri_roots(daemons)):
        for c in cri(r, skipped):
            (pods.__setitem__(c["id"], c) if c["kind"] == "sandbox" else apps.append(c))
    for c in apps:
        p = pods.get(c["sandbox"])
        if p is not None and c["container"]:
            p.setdefault("containers", []).append(c["container"])
    for p in pods.values():
        cs = sorted(p.get("containers", []))
        meta = {"runtime": "containerd", "namespace": p["namespace"] or "", "pod": p["pod"] or "",
                "container": cs[0] if len(cs) == 1 else ""}
        b.n.meta[p["name"]] = meta
        if not p["own_netns"]:              # hostNetwork: the host's namespace
            continue
        ino = _inode(p["netns_path"]) if p["netns_path"] else None
        b.netns(ino, p["name"], meta)
        if ino is not None:
            pod_netns.add(ino)
            b.path(ino, p["netns_path"], R_RUNTIME_NS)
    # Podman
    kids = conmon_children(daemons, proc)
    for r in roots(podman_root, podman_roots(daemons, podman_conf)):
        try:
            owner = os.stat(r).st_uid
        except OSError:
            continue
        rootless = owner not in (0, os.geteuid())   # another user's state
        for c in podman(r, skipped):
            kid = kids.get((c["id"], owner))
            if kid is not None and c["own_netns"]:
                # the running container's own process (its conmon runs as
                # the owner of this state: no one else's conmon names it)
                c["netns_path"] = f"{proc}/{kid}/ns/net"
            ino = _inode(c["netns_path"]) if c["netns_path"] else None
            if not c["own_netns"] or ino is None or ino in pod_netns:
                continue
            if rootless:
                # a user's own state (rootless Podman): it names only
                # namespaces inside a user namespace, and its addresses
                # rank lowest (module docstring)
                u = userns(c["netns_path"])
                if u is None or u == b.host_userns:
                    continue
            meta = {"runtime": "podman-rootless" if rootless else "podman", "namespace": "", "pod": "",
                    "container": c["name"]}
            b.n.meta[c["name"]] = meta
            b.netns(ino, c["name"], meta)
            b.path(ino, c["netns_path"], R_FOREIGN if rootless else R_RUNTIME_NS)
    # Docker: the runtime writes its addresses down
    daemon_ns = docker_netns(daemons, docker_conf)
    dockers = [{**d, "daemon_netns": daemon_ns.get(r, host)}
               for r in roots(docker_root, docker_roots(daemons, docker_conf)) for d in docker(r, proc, skipped)]
    by_id = {d["id"]: d for d in dockers}
    for ino, p in procs.items():
        d = by_id.get(p["container_id"])
        if d is not None and not d["mode"].startswith("container:") and d["mode"] != "host":
            b.netns(ino, d["name"])
    for d in dockers:
        meta = {"runtime": "docker", "namespace": "", "pod": "", "container": d["name"]}
        b.n.meta[d["name"]] = meta
        for proto, hip, port in d["ports"]:
            b.n.published.setdefault((d["daemon_netns"], proto, port), []).append((hip, d["name"]))
        if d["mode"] == "host" or d["mode"].startswith("container:"):
            continue                          # the host's, or another container's namespace
        b.netns(d["netns"], d["name"])
        for ip in d["ips"]:
            b.claim(ip, d["name"], R_DECLARED)
        if d["netns"] is not None and d["ips"]:
            b.paths.pop(d["netns"], None)     # known: no need to list them
    # addresses listed inside namespaces (cached per inode)
    for ino, (path, rank) in b.paths.items():
        hit = cache.get(ino) if cache is not None else None
        if hit is not None and now - hit[0] < ADDR_TTL_S:
            ips = hit[1]
        else:
            ips = list_addresses(path)
            if cache is not None:
                cache[ino] = (now, ips)
        for ip in ips:
            b.claim(ip, b.n.by_netns.get(ino) or path, rank)
    if cache is not None:
        for ino in [i for i in cache if i not in b.paths]:
            del cache[ino]
    _rule_ports(b.n, host, proc, daemons, list_dnat, rules_cache, now)
    b.n.skipped = len(skipped)
    return b.n


def _rule_ports(n: Names, host: int | None, proc: str, daemons: list, list_dnat, rules_cache: dict | None,
                now: float) -> None:
    """Published ports that only DNAT rules tell (Podman's netavark, the
    CNI portmap plugin, kube-proxy's NodePorts and ClusterIPs), read in the
    host's namespace and in those of the root processes that write such
    rules (RULE_WRITERS). A (protocol, address, port) is named only when
    every address its rules DNAT to is one name's; Docker's own record of a
    port comes first (n.published's order)."""
    where: dict[int, str] = {}
    if host is not None:
        where[host] = f"{proc}/1/ns/net"
    for comm, _argv, ino, pid in daemons:
        if comm not in RULE_WRITERS or ino is None or ino in where:
            continue
        try:
            if os.stat(f"{proc}/{pid}").st_uid != 0:
                continue                  # a user's own (rootless) namespace: its rules are its own
        except OSError:
            continue
        where[ino] = f"{proc}/{pid}/ns/net"
    for ino, path in where.items():
        hit = rules_cache.get(ino) if rules_cache is not None else None
        if hit is not None and now - hit[0] < max(RULES_TTL_S, RULES_COST_FACTOR * hit[2]):
            found = hit[1]
        else:
            t0 = time.monotonic()
            found = list_dnat(path)
            if rules_cache is not None:
                rules_cache[ino] = (now, found, time.monotonic() - t0)
        owners: dict[tuple, set] = {}
        for d in found:
            owners.setdefault((d.proto, d.addr, d.port), set()).add(n.by_ip.get(d.to))
        for (proto, addr, port), names in owners.items():
            if len(names) != 1 or None in names:
                continue                  # several backends, or one nobody is known for
            binds = n.published.setdefault((ino, proto, port), [])
            if not any(hip == addr for hip, _ in binds):
                binds.append((addr, names.pop()))
    if rules_cache is not None:
        for ino in [i for i in rules_cache if i not in where]:
            del rules_cache[ino]


class Attribution:
    """Cached names, refreshed by a background thread; look-ups never block.
    Names of what is gone are kept KEEP_S seconds (module docstring)."""

    def __init__(self, interval: float = 10.0, keep: float = KEEP_S, **collect_args):
        self.names = Names()
        self.interval = interval
        self.keep = keep
        self.failures = 0                 # refreshes that raised (names kept)
        self.last_error = ""
        self.refreshes = 0
        self._args = collect_args
        self._cache: dict = {}
        self._rules_cache: dict = {}
        self._seen: dict[str, dict] = {"ip": {}, "netns": {}, "meta": {}}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last = 0.0
        self.cost = 0.0                   # seconds the last refresh took
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        now = time.monotonic()
        self._last = now
        try:
            fresh = collect(cache=self._cache, rules_cache=self._rules_cache, now=now, **self._args)
        except Exception as e:       # attribution is best effort: keep the last names
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"[:200]
            return
        self.refreshes += 1
        self.cost = time.monotonic() - now
        # published ports: the present ones only (a port an exited container
        # published may be another's now)
        out = Names(skipped=fresh.skipped, published=fresh.published)
        for kind, cur, dst in (("ip", fresh.by_ip, out.by_ip), ("netns", fresh.by_netns, out.by_netns),
                               ("meta", fresh.meta, out.meta)):
            seen = self._seen[kind]
            for k, v in cur.items():
                seen.pop(k, None)
                seen[k] = (v, now)            # re-inserted: the dict stays oldest first
            while len(seen) > KEEP_MAX:
                del seen[next(iter(seen))]
            for k in [k for k, (_, t) in seen.items() if now - t > self.keep]:
                del seen[k]
            dst.update({k: v for k, (v, _) in seen.items()})
            dst.update(cur)
        self.names = out

    def kept(self) -> dict[str, int]:
        """Names remembered per kind ("ip", "netns", "meta"), present and
        exited: at most KEEP_MAX each (docs/attribution.md)."""
        return {kind: len(seen) for kind, seen in self._seen.items()}

    def start(self) -> "Attribution":
        self._thread = threading.Thread(target=self._run, daemon=True, name="attribution")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._wake.clear()
            gap = min(max(10 * self.cost, MISS_GAP_S[0]), MISS_GAP_S[1])
            if self._stop.wait(gap):
                break
            self._wake.wait(max(self.interval - gap, 0.0))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _miss(self) -> None:
        if self._thread is not None and not self._wake.is_set():
            self._wake.set()

    def ip(self, addr: str) -> str | None:
        n = self.names.by_ip.get(addr)
        if n is None:
            self._miss()
        return n

    def netns(self, inode: int) -> str | None:
        n = self.names.by_netns.get(inode)
        if n is None:
            self._miss()
        return n

    def published(self, netns: int, proto: str, dst: str, dport: int | None) -> str | None:
        """The container publishing dst:dport/proto in the namespace netns
        (a Docker daemon's: where its DNAT rules are), or None. A binding
        to one address wins over one to any address."""
        if dport is None:
            return None
        binds = self.names.published.get((netns, proto, dport))
        if not binds:
            return None
        dst = _norm(dst) or dst
        owner = self.names.by_ip.get(dst)
        if owner is not None and owner != self.names.by_netns.get(netns):
            return None     # another namespace's address: not the node's, never DNATed (--dst-type LOCAL)
        for hip, name in binds:
            if hip == dst:
                return name
        for hip, name in binds:
            if hip == "":
                return name
        return None

    def destination(self, netns: int, proto: str, dst: str, dport: int | None,
                    translated: tuple | None = None) -> str | None:
        """Who a dropped packet was going to: the container publishing its
        destination port (a table-full drop comes before DNAT: the tuple
        still has the node's address), else, where NAT had changed the
        destination, that address's owner. Never its source's side."""
        n = self.published(netns, proto, dst, dport)
        if n is None and translated is not None and translated[2] != dst:
            n = self.names.by_ip.get(_norm(translated[2]) or translated[2])
        return n

    def meta(self, name: str | None) -> dict:
        """Kubernetes-style labels of a name: runtime, namespace, pod, container."""
        return self.names.meta.get(name, {}) if name else {}

    def pod(self, addr: str) -> str | None:
        """namespace/pod of an address (a pod's, or a container's own name)."""
        n = self.ip(addr)
        m = self.meta(n)
        return f"{m['namespace']}/{m['pod']}" if m.get("pod") else n
