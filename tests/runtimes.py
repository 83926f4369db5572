"""Real container runtimes for the runtime tests: Debian 12's dockerd,
containerd (driven with `ctr`, namespace k8s.io, pod-sandbox-shaped) and
rootful Podman (netavark), started and stopped here.

Everything runs inside one network namespace made here, "the node"
(ctrt-node): the daemons are started in it (nsenter --net, the host's
mount namespace: /run/netns and /proc stay the host's), so their bridges,
NAT and filter rules live in it and go with it. Each runtime has its own
state and socket under a temporary directory (never the host's
/var/lib/docker, /run/containerd or /var/lib/containers, never the image
stage's dockerd), and every address is in this project's test ranges:

  198.19.255.0/24  node <-> client (a host outside: hits published ports)
  198.19.252.0/24  Docker's default bridge (cttd0)
  198.19.253.0/24  a user-defined Docker network (cttd1)
  198.19.254.0/24  the pods' bridge (cttc0; the test plays the CNI plugin)
  198.19.251.0/24  Podman's network (cttp0)
  198.19.250.0/24 and fd00:c7:7::/64  an IPv6-enabled Docker network (cttd2)
  198.19.248.0/24  rootless Podman's user network (in that user's rootless namespace)

No registry: the image is a busybox-static rootfs made here, imported with
`docker import` and `podman import`; containerd runs it from a copy of
that rootfs (`ctr run --rootfs`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests import lab as L
from tracer.kernel import netns

NODE, CLIENT = "ctrt-node", "ctrt-client"
PREFIX = "ctrt-"
UP_NODE, UP_CLIENT = "198.19.255.1", "198.19.255.2"
DOCKER_BR, DOCKER_GW = "cttd0", "198.19.252.1"
USER_NET, USER_SUBNET, USER_GW = "cttd1", "198.19.253.0/24", "198.19.253.1"
POD_BR, POD_GW = "cttc0", "198.19.254.1"
PODMAN_BR, PODMAN_SUBNET, PODMAN_GW = "cttp0", "198.19.251.0/24", "198.19.251.1"
V6_NET, V6_SUBNET4, V6_GW4 = "cttd2", "198.19.250.0/24", "198.19.250.1"
V6_SUBNET, V6_GW = "fd00:c7:7::/64", "fd00:c7:7::1"
RL_SUBNET, RL_GW = "198.19.248.0/24", "198.19.248.1"
GEN_PORT = 9                    # discard: nothing listens, entries stay unreplied
IMAGE = "ctt/bb:1"
DOCKER_CLI = "/usr/bin/docker"  # Debian's client, matching its daemon
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


class RuntimeUnavailable(Exception):
    """A runtime that cannot start here; the message says why."""


def sh(*cmd, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
    return r


def in_node(*cmd, **kw):
    return sh("nsenter", f"--net=/run/netns/{NODE}", *cmd, **kw)


def rootfs(dest: Path) -> Path:
    """A busybox-static rootfs (a few MB, made in milliseconds)."""
    bb = shutil.which("busybox")
    if not bb or "static" not in sh("file", "-L", bb, check=False).stdout:
        bb = "/bin/busybox"
    (dest / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "etc", "tmp", "run"):
        (dest / d).mkdir()
    shutil.copy(bb, dest / "bin" / "busybox")
    for tool in ("sh", "sleep", "nc", "ip", "cat", "true"):
        os.symlink("busybox", dest / "bin" / tool)
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return dest


def node_down() -> None:
    for n in L.lab_namespaces(PREFIX):
        sh("ip", "netns", "del", n, check=False)


def node_up() -> None:
    """The node and the client, joined by a veth pair; the pods' bridge."""
    node_down()
    for n in (NODE, CLIENT):
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    sh("ip", "-n", NODE, "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", CLIENT)
    sh("ip", "-n", NODE, "addr", "add", f"{UP_NODE}/24", "dev", "up0")
    sh("ip", "-n", CLIENT, "addr", "add", f"{UP_CLIENT}/24", "dev", "up0")
    for n in (NODE, CLIENT):
        sh("ip", "-n", n, "link", "set", "up0", "up")
    sh("ip", "-n", NODE, "link", "add", POD_BR, "type", "bridge")
    sh("ip", "-n", NODE, "addr", "add", f"{POD_GW}/24", "dev", POD_BR)
    sh("ip", "-n", NODE, "link", "set", POD_BR, "up")
    sh("ip", "-n", NODE, "link", "add", DOCKER_BR, "type", "bridge")
    sh("ip", "-n", NODE, "addr", "add", f"{DOCKER_GW}/24", "dev", DOCKER_BR)
    sh("ip", "-n", NODE, "link", "set", DOCKER_BR, "up")
    # conntrack on in the node (both families) whatever the runtimes add
    for tool in ("iptables", "ip6tables"):
        in_node(tool, "-I", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")


def _wait(ok, what: str, log: Path | None = None, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    tail = log.read_text()[-1500:] if log and log.exists() else ""
    raise RuntimeUnavailable(f"{what} did not start within {timeout:.0f} s: {tail}")


class Docker:
    """A private dockerd in the node: data root from its daemon.json (as an
    operator sets it), exec root, socket and pidfile under its temp dir, the
    default bridge on cttd0, iptables on (inside the node only)."""

    def __init__(self, base: Path):
        if not shutil.which("dockerd") or not os.path.exists(DOCKER_CLI):
            raise RuntimeUnavailable("Debian's docker.io is not installed (dockerd, /usr/bin/docker)")
        self.t = base / "docker"
        self.t.mkdir()
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.t}/docker.sock",
                    "DOCKER_CONFIG": str(self.t / "client")}
        (self.t / "daemon.json").write_text(json.dumps(
            {"data-root": str(self.t / "data"), "deprecated-key-path": str(self.t / "key.json")}))
        self.log = self.t / "dockerd.log"
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NODE}", "dockerd", "--config-file", str(self.t / "daemon.json"),
             "--exec-root", str(self.t / "exec"), "--pidfile", str(self.t / "dockerd.pid"),
             "-H", self.env["DOCKER_HOST"], "--bridge", DOCKER_BR, "--iptables=true",
             "--ip6tables=false", "--ip-forward=true", "--userland-proxy=false"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(lambda: self.cli("version", check=False).returncode == 0, "dockerd", self.log)

    def cli(self, *args, check=True, timeout=120):
        return sh(DOCKER_CLI, *args, env=self.env, check=check, timeout=timeout)

    def load(self, tar: Path) -> None:
        self.cli("import", str(tar), IMAGE)

    def run(self, name: str, *opts: str, cmd=("sleep", "3600")) -> dict:
        self.cli("run", "-d", "--name", name, *opts, IMAGE, *cmd)
        return self.inspect(name)

    def inspect(self, name: str) -> dict:
        d = json.loads(self.cli("inspect", name).stdout)[0]
        nets = d["NetworkSettings"]["Networks"] or {}
        return {"name": name, "pid": d["State"]["Pid"], "id": d["Id"],
                "ips": [n["IPAddress"] for n in nets.values() if n.get("IPAddress")],
                "ip6s": [n["GlobalIPv6Address"] for n in nets.values() if n.get("GlobalIPv6Address")]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            ids = self.cli("ps", "-aq", check=False).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False, timeout=120)
            self.cli("network", "prune", "-f", check=False)
        _end(self.proc, self.t)


class Containerd:
    """A private containerd in the node: root, state (from its config file,
    as an operator sets it) and socket under its temp dir; the CRI plugin
    off (the test writes the annotations the CRI plugin writes)."""

    def __init__(self, base: Path, rootfs_dir: Path):
        if not shutil.which("containerd") or not shutil.which("ctr") or not shutil.which("runc"):
            raise RuntimeUnavailable("containerd, ctr or runc is not installed (Debian: containerd, runc)")
        self.t = base / "containerd"
        self.t.mkdir()
        self.rootfs = rootfs_dir
        self.sock = self.t / "containerd.sock"
        (self.t / "config.toml").write_text(
            f'version = 2\nroot = "{self.t}/root"\nstate = "{self.t}/state"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n')
        self.log = self.t / "containerd.log"
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NODE}", "containerd", "--config", str(self.t / "config.toml")],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(lambda: self.ctr("version", check=False).returncode == 0, "containerd", self.log)
        self.pods: dict[str, dict] = {}

    def ctr(self, *args, check=True):
        return sh("ctr", "-a", self.sock, "-n", "k8s.io", *args, check=check)

    def _copy(self, cid: str) -> Path:
        d = self.t / "rootfs" / cid
        shutil.copytree(self.rootfs, d, symlinks=True)
        return d

    def _pid(self, cid: str) -> int:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == cid:
                return int(f[1])
        raise RuntimeError(f"no task {cid}")

    def pod(self, ns: str, name: str, ip: str | None, containers=(), host_network=False) -> dict:
        """A pod as the CRI plugin makes one: a sandbox (pause) container
        owning a network namespace (/run/netns/ctrt-cni-*, given an address
        on the pods' bridge, as a CNI plugin does; or the node's for
        hostNetwork), app containers joining it."""
        sid = f"sb{len(self.pods)}{name.replace('-', '')}"[:60]
        ann = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": name,
               "io.kubernetes.cri.sandbox-namespace": ns, "io.kubernetes.cri.sandbox-id": sid}
        opts = []
        path = None
        if host_network:
            opts.append("--net-host")
        else:
            cni = f"{PREFIX}cni-{len(self.pods)}"
            sh("ip", "netns", "add", cni)
            path = f"/run/netns/{cni}"
            veth = f"vc{len(self.pods)}"
            sh("ip", "-n", NODE, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", cni)
            sh("ip", "-n", NODE, "link", "set", veth, "master", POD_BR, "up")
            sh("ip", "-n", cni, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", cni, "link", "set", "eth0", "up")
            sh("ip", "-n", cni, "link", "set", "lo", "up")
            sh("ip", "-n", cni, "route", "add", "default", "via", POD_GW)
            opts += ["--with-ns", f"network:{path}"]
        self.ctr("run", "-d", "--rootfs", *opts, *[f"--annotation={k}={v}" for k, v in ann.items()],
                 str(self._copy(sid)), sid, "/bin/sleep", "3600")
        pid = self._pid(sid)
        for c in containers:
            cid = f"{sid}{c}"[:60]
            a = {**ann, "io.kubernetes.cri.container-type": "container",
                 "io.kubernetes.cri.container-name": c}
            join = ["--net-host"] if host_network else ["--with-ns", f"network:/proc/{pid}/ns/net"]
            self.ctr("run", "-d", "--rootfs", *join, *[f"--annotation={k}={v}" for k, v in a.items()],
                     str(self._copy(cid)), cid, "/bin/sleep", "3600")
        p = {"name": f"{ns}/{name}", "namespace": ns, "pod": name, "ip": ip, "pid": pid,
             "netns": path or f"/run/netns/{NODE}", "containers": list(containers)}
        self.pods[sid] = p
        return p

    def stop(self) -> None:
        if self.proc.poll() is None:
            for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
                f = line.split()
                if f:
                    self.ctr("tasks", "kill", "-s", "KILL", f[0], check=False)
            time.sleep(0.3)
            for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "rm", "-f", c, check=False)
                self.ctr("containers", "rm", c, check=False)
        _end(self.proc, self.t)


class Podman:
    """Rootful Podman (netavark) with its own graph root, run root, tmp dir
    and network config dir; its network's bridge (cttp0) in the node."""

    def __init__(self, base: Path):
        if not shutil.which("podman"):
            raise RuntimeUnavailable("podman is not installed (Debian: podman, netavark)")
        self.t = base / "podman"
        (self.t / "net").mkdir(parents=True)
        (self.t / "net" / "ctt.json").write_text(json.dumps({
            "name": "ctt", "id": "c" * 64, "driver": "bridge", "network_interface": PODMAN_BR,
            "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": PODMAN_SUBNET, "gateway": PODMAN_GW}],
            "ipv6_enabled": False, "internal": False, "dns_enabled": False,
            "ipam_options": {"driver": "host-local"}}))
        self.base = ["podman", "--root", self.t / "root", "--runroot", self.t / "run", "--tmpdir",
                     self.t / "tmp", "--network-config-dir", self.t / "net", "--cgroup-manager",
                     "cgroupfs", "--events-backend", "none"]
        r = self.cli("info", check=False)
        if r.returncode != 0:
            raise RuntimeUnavailable(f"podman info failed: {r.stderr.strip()[-300:]}")

    def cli(self, *args, check=True):
        return in_node(*self.base, *args, check=check)

    def load(self, tar: Path) -> None:
        self.cli("import", tar, IMAGE)

    def run(self, name: str, *args: str) -> dict:
        # this machine's hard limits are below Podman's defaults (nofile 1048576)
        self.cli("run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                 "--name", name, "--network", "ctt", *args, IMAGE, "sleep", "3600")
        d = json.loads(self.cli("inspect", name).stdout)[0]
        nets = d["NetworkSettings"]["Networks"] or {}
        return {"name": name, "pid": d["State"]["Pid"],
                "ips": [n["IPAddress"] for n in nets.values() if n.get("IPAddress")]}

    def stop(self) -> None:
        self.cli("rm", "-a", "-f", "-t", "0", check=False)
        _umount_under(self.t)


class RootlessPodman:
    """Rootless Podman (Debian 12: uidmap's newuidmap, slirp4netns,
    netavark in the rootless namespace): a user made here (ctrt-rl), its
    home and runtime dir under the temp dir, run from the node (so that
    slirp4netns' sockets are the node's). Two containers: rl-slirp
    (slirp4netns: the node sees slirp4netns' own sockets) and rl-net (a
    user network, RL_SUBNET: netavark's bridge and NAT rules live in the
    user's rootless namespace, where its entries are)."""

    USER = "ctrt-rl"

    def __init__(self, base: Path, tar: Path):
        for tool, pkg in (("podman", "podman"), ("newuidmap", "uidmap"), ("slirp4netns", "slirp4netns"),
                          ("setpriv", "util-linux")):
            if not shutil.which(tool):
                raise RuntimeUnavailable(f"{tool} is not installed (Debian: {pkg})")
        self.t = base / "rootless"
        self.home, self.xdg = self.t / "home", self.t / "run"
        sh("userdel", "-r", self.USER, check=False)          # a leftover of a killed run
        _forget_subids(self.USER)
        sh("useradd", "-M", "-d", self.home, "-s", "/bin/sh", self.USER)
        self.uid = int(sh("id", "-u", self.USER).stdout)
        for f in ("/etc/subuid", "/etc/subgid"):     # Debian's useradd adds a range; else one here
            if not any(l.startswith(self.USER + ":") for l in Path(f).read_text().splitlines()):
                with open(f, "a") as fh:
                    fh.write(f"{self.USER}:300000:65536\n")
        os.chmod(base, 0o711)                        # the user reaches its home below it
        self.t.mkdir()
        for d in (self.home, self.xdg):
            d.mkdir(mode=0o700)
            os.chown(d, self.uid, self.uid)
        shutil.copy(tar, self.home / "rootfs.tar")
        os.chown(self.home / "rootfs.tar", self.uid, self.uid)
        self.pre = ["nsenter", f"--net=/run/netns/{NODE}", "setpriv", f"--reuid={self.uid}",
                    f"--regid={self.uid}", "--init-groups", "env", f"HOME={self.home}",
                    f"XDG_RUNTIME_DIR={self.xdg}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "podman", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        r = self.cli("info", check=False)
        if r.returncode != 0:
            raise RuntimeUnavailable(f"rootless podman info failed: {r.stderr.strip()[-300:]}")
        self.cli("import", self.home / "rootfs.tar", IMAGE)
        self.cli("network", "create", "--subnet", RL_SUBNET, "rlnet")

    def cli(self, *args, check=True):
        return sh(*self.pre, *args, check=check, cwd=self.home)

    def run(self, name: str, network: str) -> dict:
        self.cli("run", "-d", "--ulimit", "nofile=1024:1024", "--name", name, "--network", network,
                 IMAGE, "sleep", "3600")
        d = json.loads(self.cli("inspect", name).stdout)[0]
        nets = d["NetworkSettings"].get("Networks") or {}
        ips = [n["IPAddress"] for n in nets.values() if n.get("IPAddress")]
        if not ips:                                  # slirp4netns: inspect may not say it
            out = sh("nsenter", "-t", d["State"]["Pid"], "-n", "ip", "-4", "-o", "addr", "show",
                     "scope", "global").stdout
            ips = [l.split()[3].split("/")[0] for l in out.splitlines()]
        return {"name": name, "pid": d["State"]["Pid"], "ips": ips}

    def pids(self, comm: str | None = None) -> list[int]:
        r = sh("pgrep", "-u", str(self.uid), *([] if comm is None else ["-x", comm]), check=False)
        return [int(p) for p in r.stdout.split()]

    def stop(self) -> None:
        self.cli("rm", "-a", "-f", "-t", "0", check=False)
        self.cli("network", "rm", "-f", "rlnet", check=False)
        for _ in range(2):                           # the user's own processes, by id (pause, slirp4netns)
            for p in self.pids():
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)
        sh("userdel", self.USER, check=False)
        _forget_subids(self.USER)
        _umount_under(self.t)


def _forget_subids(user: str) -> None:
    for f in ("/etc/subuid", "/etc/subgid"):
        p = Path(f)
        if p.exists():
            lines = p.read_text().splitlines(keepends=True)
            kept = [l for l in lines if not l.startswith(user + ":")]
            if kept != lines:
                p.write_text("".join(kept))


def _end(proc: subprocess.Popen, d: Path) -> None:
    """Stop a daemon we started (SIGTERM, then SIGKILL) and unmount what it left under d."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _umount_under(d)


def _umount_under(d: Path) -> None:
    mounts = [l.split()[1] for l in Path("/proc/mounts").read_text().splitlines()
              if l.split()[1].startswith(str(d))]
    for m in sorted(mounts, reverse=True):
        sh("umount", "-l", m, check=False)


# --- traffic with a known ground truth --------------------------------------------
def udp_flows(netns_path: str, src: str, dst: str, n: int, first_port: int,
              dport: int = GEN_PORT) -> list[int]:
    """n new UDP flows from src (inside the namespace at netns_path), one
    source port each, to dst:dport. A flow refused at the sender (a full
    table on the local output path: EPERM) still counts as sent. Returns
    the source ports used."""
    ports = []
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    with netns.entered(netns_path):
        for i in range(n):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                _bind(s, (src, first_port + i))
                try:
                    s.sendto(b"x", (dst, dport))
                except PermissionError:
                    pass
                ports.append(first_port + i)
            finally:
                s.close()
    return ports


def _bind(s: socket.socket, addr: tuple) -> None:
    """bind, waiting up to 5 s for an IPv6 address still in duplicate
    address detection (tentative: EADDRNOTAVAIL)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            s.bind(addr)
            return
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_dad(timeout: float = 10) -> None:
    """Until no IPv6 address in the node is tentative (duplicate address
    detection: a gateway address still in it answers no neighbour
    solicitation, and the containers' packets to it are never sent)."""
    _wait(lambda: "tentative" not in in_node("ip", "-6", "addr", check=False).stdout,
          "IPv6 duplicate address detection in the node", timeout=timeout)


def node_entries() -> list[dict]:
    """The node's table as `conntrack -L -o xml`-free text: [{src, dst, rsrc, sport, dport}]."""
    out = "".join(in_node("conntrack", "-L", "-f", f, check=False).stdout for f in ("ipv4", "ipv6"))
    rows = []
    for line in out.splitlines():
        kv = [w.split("=", 1) for w in line.split() if "=" in w]
        srcs = [v for k, v in kv if k == "src"]
        dsts = [v for k, v in kv if k == "dst"]
        sports = [int(v) for k, v in kv if k == "sport"]
        dports = [int(v) for k, v in kv if k == "dport"]
        if len(srcs) >= 2:
            rows.append({"src": srcs[0], "dst": dsts[0], "rsrc": srcs[1],
                         "sport": sports[0] if sports else None, "dport": dports[0] if dports else None})
    return rows


def node_stats() -> dict[str, int]:
    with netns.entered(NODE):
        text = Path("/proc/thread-self/net/stat/nf_conntrack").read_text()
    return L.sum_stat(text)


def node_count() -> int:
    with netns.entered(NODE):
        return int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())


class Limit:
    """Lower the global nf_conntrack_max so that the node takes `admit` more
    entries; restored on exit (and by the fixture's finaliser)."""

    def __init__(self, admit: int):
        self.admit = admit

    def __enter__(self):
        self.old = Path(CT_MAX).read_text().strip()
        self._port = 50000
        self.refill()
        return self

    def refill(self) -> None:
        """(Again) the node full but for `admit` entries: entries expire
        (UDP: 30 s), so a long test calls this before each burst."""
        Path(CT_MAX).write_text(self.old)
        root = int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())
        # the node holds at least 100 more entries than the host's own table
        # (filler flows from the client), so that the lowered limit leaves
        # the host's own traffic room
        need = root + 100 - node_count()
        if need > 0:
            n = need + 20
            if self._port + n > 65000:
                self._port = 50000
            udp_flows(f"/run/netns/{CLIENT}", UP_CLIENT, UP_NODE, n, self._port)
            self._port += n
        Path(CT_MAX).write_text(str(node_count() + self.admit))

    def __exit__(self, *exc):
        Path(CT_MAX).write_text(self.old)


def host_state() -> str:
    """What the runtimes could leave on the host, outside the node: compared
    before and after the tests."""
    lines = [l for l in sh("sysctl", "-a", check=False).stdout.splitlines()
             if l.startswith(("net.ipv4.ip_forward", "net.bridge", "net.ipv4.conf.all.forwarding"))]
    for t in ("iptables-save", "ip6tables-save"):
        lines += [f"{t} {l}" for l in sh(t, check=False).stdout.splitlines()
                  if any(w in l.lower() for w in ("docker", "netavark", "198.19.25", "cttd", "cttp"))]
    lines += ["link " + l for l in sh("ip", "-o", "link", "show", check=False).stdout.splitlines()
              if any(w in l for w in ("cttd", "cttp", "cttc", "docker0", "podman"))]
    lines += ["netns " + n for n in sorted(os.listdir("/run/netns")) if n.startswith(("netns-", PREFIX))] \
        if os.path.isdir("/run/netns") else []
    lines += [f"ct_max {Path(CT_MAX).read_text().strip()}"]
    lines += [f"{f} {l}" for f in ("/etc/subuid", "/etc/subgid", "/etc/passwd") if os.path.exists(f)
              for l in Path(f).read_text().splitlines() if l.startswith(RootlessPodman.USER + ":")]
    return "\n".join(sorted(lines))


# what the runtimes make outside their own dirs: the shims' sockets and
# fifos (/run/containerd, /run/docker), netavark's address allocations
OUTSIDE = ("/run/containerd", "/run/docker", "/run/containers/networks/ipam.db", "/run/containers")


def fresh_paths() -> list[str]:
    """Those of OUTSIDE that do not exist yet (removed after the tests)."""
    return [p for p in OUTSIDE if not os.path.exists(p)]


def remove_fresh(paths: list[str]) -> None:
    for p in paths:
        if os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):       # only empty directories: never someone else's files
            sh("find", p, "-depth", "-type", "d", "-empty", "-delete", check=False)


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ctrt-", dir="/tmp"))
