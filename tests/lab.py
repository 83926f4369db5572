"""Test lab helpers: network namespaces with real conntrack entries.

Everything stays inside namespaces this module creates (loopback only);
every namespace is deleted on close, and leftovers from a crashed run are
removed by their prefix (PREFIX).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid

from tracer.kernel import netns

PREFIX = "cttest-"


def sh(*cmd: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True)


def cleanup_leftovers() -> None:
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


class Netns:
    """A fresh network namespace with loopback up and conntrack switched on."""

    def __init__(self, tag: str = "ns"):
        self.name = f"{PREFIX}{tag}-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "link", "set", "lo", "up", ns=self.name)
            # Conntrack is only active in a namespace once a rule needs it.
            sh("iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP", ns=self.name)
            sh("ip6tables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP", ns=self.name)
        except Exception:
            self.close()
            raise
        self._socks: list[socket.socket] = []

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()
        sh("ip", "netns", "del", self.name, check=False)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*cmd, check=check, ns=self.name)

    def sysctl(self, key: str, value: str) -> None:
        with netns.entered(self.name):
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)

    def read(self, path: str) -> str:
        with netns.entered(self.name):
            with open(path) as f:
                return f.read()

    def count(self) -> int:
        return int(self.read("/proc/sys/net/netfilter/nf_conntrack_count"))

    def keep(self, s: socket.socket) -> socket.socket:
        self._socks.append(s)
        return s

    def udp_flows(self, n: int, dst_addrs: int = 1, first_port: int = 1024) -> int:
        """n new UDP flows from one socket (distinct destination ports on
        127.0.0.1.. 127.0.0.<dst_addrs>); nothing listens, so each stays UNREPLIED."""
        with netns.entered(self.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.9", 0))
        sent = 0
        ports = 65535 - first_port
        try:
            for i in range(n):
                addr = f"127.0.0.{1 + i // ports}"
                try:
                    s.sendto(b"x", (addr, first_port + i % ports))
                    sent += 1
                except OSError:
                    pass
        finally:
            s.close()
        return sent


# What known_entries() puts in the table, breakdown by breakdown.
KNOWN = {
    "total": 13,
    "by_family": {"ipv4": 10, "ipv6": 3},
    "by_proto": {"tcp": 5, "udp": 6, "icmp": 1, "icmpv6": 1},
    "by_state": {"ESTABLISHED": 2, "TIME_WAIT": 1, "SYN_SENT": 1, "CLOSE_WAIT": 1},
    "by_src": {"127.0.0.2": 1, "127.0.0.3": 1, "127.0.0.4": 1, "127.0.0.5": 5,
               "127.0.0.6": 1, "127.0.0.7": 1, "::1": 3},
    "by_dst": {"127.0.0.1": 10, "::1": 3},
    "by_dport": {"8080": 3, "9999": 1, "5000": 3, "5001": 1, "5002": 1, "8081": 1, "5003": 1},
    "by_proto_dport": {"tcp/8080": 3, "tcp/9999": 1, "udp/5000": 3, "udp/5001": 1,
                       "udp/5002": 1, "tcp/8081": 1, "udp/5003": 1},
    "by_zone": {"0": 12, "7": 1},
    "by_mark": {"0": 12, "42": 1},
    "by_flags": {"ASSURED": 4, "UNREPLIED": 7},
}


def known_entries(ns: Netns) -> dict:
    """Create a known set of entries in `ns`; return what the table must hold.

    TCP ESTABLISHED, TIME_WAIT, CLOSE_WAIT and SYN_SENT, UDP (plain, in zone 7, with mark
    42), IPv6 TCP and UDP, ICMP and ICMPv6 echo. Sockets that keep entries
    alive are held by `ns` until it closes.
    """
    ns.run("iptables", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "5001", "-j", "CT", "--zone", "7")
    ns.run("iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "5002", "-j", "CONNMARK", "--set-mark", "42")
    ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP")
    with netns.entered(ns.name):
        lst = ns.keep(socket.socket())
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", 8080))
        lst.listen(8)
        est = ns.keep(socket.socket())
        est.bind(("127.0.0.2", 0))
        est.connect(("127.0.0.1", 8080))
        ns.keep(lst.accept()[0])
        tw = socket.socket()
        tw.bind(("127.0.0.3", 0))
        tw.connect(("127.0.0.1", 8080))
        peer = lst.accept()[0]
        tw.close()                     # active close: client FIN first ...
        time.sleep(0.05)
        peer.close()                   # ... then the server's: entry goes to TIME_WAIT
        cw = ns.keep(socket.socket())
        cw.bind(("127.0.0.7", 0))
        cw.connect(("127.0.0.1", 8080))
        ns.keep(lst.accept()[0])
        cw.shutdown(socket.SHUT_WR)    # FIN acked, server never closes: CLOSE_WAIT
        syn = ns.keep(socket.socket())
        syn.bind(("127.0.0.4", 0))
        syn.setblocking(False)
        try:
            syn.connect(("127.0.0.1", 9999))   # SYN dropped in INPUT: stays SYN_SENT
        except BlockingIOError:
            pass
        for port, count in ((5000, 3), (5001, 1), (5002, 1)):
            for _ in range(count):
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("127.0.0.5", 0))
                u.sendto(b"x", ("127.0.0.1", port))
                u.close()
        l6 = ns.keep(socket.socket(socket.AF_INET6))
        l6.bind(("::1", 8081))
        l6.listen(1)
        e6 = ns.keep(socket.socket(socket.AF_INET6))
        e6.connect(("::1", 8081))
        ns.keep(l6.accept()[0])
        u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u6.sendto(b"x", ("::1", 5003))
        u6.close()
    ns.run("ping", "-c1", "-W1", "-I", "127.0.0.6", "127.0.0.1")
    ns.run("ping", "-6", "-c1", "-W1", "::1")
    time.sleep(0.2)
    return dict(KNOWN)


def is_root() -> bool:
    return os.geteuid() == 0


# --- the conntrack lab: a Docker-like host -------------------------------------------
#
#   containers (ctlab-c1..N)          node (ctlab-node)                   peer (ctlab-peer)
#   eth0 198.18.1.(10+i)/24 ── vcI ─┐ br0 198.18.1.1/24                  eth0 198.19.0.2/24
#                                   └ ip_forward, MASQUERADE 198.18.1.0/24 -o up0
#                                     service VIP 198.18.200.10 tcp/80, udp/53 -> DNAT peer
#                                     up0 198.19.0.1/24 ───────────────── TCP echo :8080
#                                                                         UDP echo :53
#                                                                         tcp/9: SYN dropped
#   optional second node (ctlab-node2), underlay ul0 198.18.250.1/30 <-> .2/30,
#   VXLAN vx0 id 100 udp/4789 (outer source port pinned to 4789), overlay 198.18.251.1/24 <-> .2
#
# All addresses are in 198.18.0.0/15 (RFC 2544 benchmarking), all links live in
# the lab's namespaces, nothing routes to the machine's interfaces.

import json
import selectors
import signal
import sys
from dataclasses import dataclass, field as dc_field
from pathlib import Path

LAB_PREFIX = "ctlab-"
STATE_DIR = Path("/run/cttrace-lab")
BRIDGE_NET = "198.18.1.0/24"
BRIDGE_IP = "198.18.1.1"
UPLINK_NODE, UPLINK_PEER = "198.19.0.1", "198.19.0.2"
SERVICE_VIP = "198.18.200.10"
TCP_PORT, UDP_PORT, BLACKHOLE_PORT = 8080, 53, 9
UNDERLAY = ("198.18.250.1", "198.18.250.2")
OVERLAY = ("198.18.251.1", "198.18.251.2")
VXLAN_PORT = 4789
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


class LabError(Exception):
    pass


@dataclass(frozen=True)
class Flow:
    """An original-direction tuple, as the node's conntrack sees it."""
    proto: str
    src: str
    sport: int
    dst: str
    dport: int


@dataclass
class Report:
    """What a load generator did: flows that completed, flows that failed."""
    kind: str
    container: str
    requested: int
    flows: list = dc_field(default_factory=list)
    failed: list = dc_field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.flows) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.kind} from {self.container}: {len(self.flows)}/{self.requested} ok, "
                f"{len(self.failed)} failed, {self.seconds:.2f} s, {self.rate:,.0f} flows/s")


@dataclass
class TableFull:
    """Ground truth of a table-full run."""
    k: int
    limit: int
    admitted: list
    dropped: list
    kernel_drop: int          # delta of the node's `drop` counter
    kernel_early_drop: int    # delta of the node's `early_drop` counter
    count_after: int
    seconds: float


def _ip(*args: str, ns: str | None = None) -> None:
    sh("ip", *(["-n", ns] if ns else []), *args)


def lab_namespaces(prefix: str = LAB_PREFIX) -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [l.split()[0] for l in out.splitlines() if l.split() and l.split()[0].startswith(prefix)]


def lab_down(prefix: str = LAB_PREFIX) -> list[str]:
    """Remove every trace of a lab (also after a crash): restore the sysctls
    it saved, kill its processes, delete its namespaces. Returns what it did."""
    done = []
    state = STATE_DIR / f"{prefix}state.json"
    if state.exists():
        try:
            saved = json.loads(state.read_text())
        except ValueError:
            saved = {}
        for path, value in saved.get("sysctl", {}).items():
            with open(path, "w") as f:
                f.write(value)
            done.append(f"restored {path}={value}")
        state.unlink()
    (STATE_DIR / f"{prefix}server.log").unlink(missing_ok=True)
    for name in lab_namespaces(prefix):
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", name, check=False)
        done.append(f"deleted {name}")
    return done


class Lab:
    """The lab; use as a context manager (down on exit, whatever happens)."""

    def __init__(self, containers: int = 2, vxlan: bool = False, prefix: str = LAB_PREFIX):
        if not 1 <= containers <= 200:
            raise LabError("containers: 1 to 200")
        self.prefix = prefix
        self.node = f"{prefix}node"
        self.peer = f"{prefix}peer"
        self.node2 = f"{prefix}node2" if vxlan else None
        self.containers = [f"{prefix}c{i}" for i in range(1, containers + 1)]
        self.held: list[socket.socket] = []
        self.server: subprocess.Popen | None = None
        self._udp_port: dict[str, int] = {}

    # -- up / down --------------------------------------------------------------------
    def up(self) -> "Lab":
        left = lab_namespaces(self.prefix)
        if left:
            raise LabError(f"a lab is already up ({', '.join(left)}): run 'scripts/lab down' first")
        try:
            self._build()
        except Exception:
            self.down()
            raise
        return self

    def _build(self) -> None:
        names = [self.node, self.peer, *self.containers] + ([self.node2] if self.node2 else [])
        for n in names:
            sh("ip", "netns", "add", n)
            # IPv4 only: no neighbour discovery or MLD packets to disturb the counts
            sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1", ns=n)
            _ip("link", "set", "lo", "up", ns=n)
        node = self.node
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)
        # The interfaces' own IGMP reports (to 224.0.0.22) are not the lab's
        # load: untracked, they cannot take entries or be counted as drops.
        # The rules go in before any interface comes up: a link sends its
        # first report the moment it is up (a clean-clone run once found
        # 198.18.1.1 -> 224.0.0.22 in the node's table, from br0).
        _restore(node, f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {SERVICE_VIP}/32 -p tcp --dport 80 -j DNAT --to-destination {UPLINK_PEER}:{TCP_PORT}
-A PREROUTING -d {SERVICE_VIP}/32 -p udp --dport 53 -j DNAT --to-destination {UPLINK_PEER}:{UDP_PORT}
-A POSTROUTING -s {BRIDGE_NET} -o up0 -j MASQUERADE
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p igmp -j CT --notrack
-A OUTPUT -p igmp -j CT --notrack
COMMIT
""")
        _ip("link", "add", "br0", "type", "bridge", ns=node)
        _ip("addr", "add", f"{BRIDGE_IP}/24", "dev", "br0", ns=node)
        _ip("link", "set", "br0", "up", ns=node)
        for i, c in enumerate(self.containers, 1):
            _ip("link", "add", f"vc{i}", "type", "veth", "peer", "name", "eth0", "netns", c, ns=node)
            _ip("link", "set", f"vc{i}", "master", "br0", "up", ns=node)
            _ip("addr", "add", f"{self.container_ip(c)}/24", "dev", "eth0", ns=c)
            _ip("link", "set", "eth0", "up", ns=c)
            _ip("route", "add", "default", "via", BRIDGE_IP, ns=c)
        _ip("link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", self.peer, ns=node)
        _ip("addr", "add", f"{UPLINK_NODE}/24", "dev", "up0", ns=node)
        _ip("link", "set", "up0", "up", ns=node)
        _ip("addr", "add", f"{UPLINK_PEER}/24", "dev", "eth0", ns=self.peer)
        _ip("link", "set", "eth0", "up", ns=self.peer)
        _restore(self.peer, f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp --dport {BLACKHOLE_PORT} -j DROP
COMMIT
""")
        if self.node2:
            n2 = self.node2
            _ip("link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", n2, ns=node)
            for ns, (mine, other), (ov, _) in ((node, UNDERLAY, OVERLAY),
                                               (n2, UNDERLAY[::-1], OVERLAY[::-1])):
                _ip("addr", "add", f"{mine}/30", "dev", "ul0", ns=ns)
                _ip("link", "set", "ul0", "up", ns=ns)
                _ip("link", "add", "vx0", "type", "vxlan", "id", "100", "dstport", str(VXLAN_PORT),
                    "srcport", str(VXLAN_PORT), str(VXLAN_PORT + 1), "local", mine, "remote", other,
                    "dev", "ul0", ns=ns)
                _ip("addr", "add", f"{ov}/24", "dev", "vx0", ns=ns)
                _ip("link", "set", "vx0", "up", ns=ns)
        ready = STATE_DIR / f"{self.prefix}server.ready"
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        root = str(Path(__file__).resolve().parent.parent)
        # The servers may outlive this process (`scripts/lab up`): they must
        # not hold its stdout/stderr, or whoever reads them (a pipe, a test)
        # waits for ever. Their messages go to a log next to the state file.
        with open(STATE_DIR / f"{self.prefix}server.log", "ab") as log:
            self.server = subprocess.Popen(
                ["ip", "netns", "exec", self.peer, sys.executable, "-m", "tests.labserver",
                 "--addr", UPLINK_PEER, "--tcp", str(TCP_PORT), "--udp", str(UDP_PORT),
                 "--ready", str(ready)], cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise LabError("the peer's servers did not start (see "
                               f"{STATE_DIR / (self.prefix + 'server.log')})")
            time.sleep(0.02)
        ready.unlink()

    def down(self) -> list[str]:
        self.release()
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                self.server.kill()
            self.server = None
        return lab_down(self.prefix)

    @classmethod
    def attach(cls, prefix: str = LAB_PREFIX) -> "Lab":
        """The lab that is up (made by `scripts/lab up`), to make load in:
        its containers and node2 from its namespaces, and where each
        container's UDP source ports stopped (so a second load never
        reuses a 5-tuple whose entry still lives)."""
        names = lab_namespaces(prefix)
        if not names:
            raise LabError("no lab is up: run 'scripts/lab up' first")
        cs = sorted((n for n in names if n[len(prefix):].startswith("c") and n[len(prefix) + 1:].isdigit()),
                    key=lambda n: int(n[len(prefix) + 1:]))
        if f"{prefix}node" not in names or f"{prefix}peer" not in names or not cs or \
                cs != [f"{prefix}c{i}" for i in range(1, len(cs) + 1)]:
            raise LabError(f"the lab is incomplete ({', '.join(names)}): run 'scripts/lab down', then 'up'")
        lab = cls(len(cs), f"{prefix}node2" in names, prefix)
        lab._udp_port = dict(lab._state()[1].get("udp_port", {}))
        return lab

    def save_ports(self) -> None:
        """Remember where each container's UDP source ports stopped."""
        f, st = self._state()
        st["udp_port"] = self._udp_port
        f.write_text(json.dumps(st))

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def release(self) -> None:
        """Close the sockets that keep long-lived entries alive."""
        for s in self.held:
            s.close()
        self.held.clear()

    # -- the kernel's view --------------------------------------------------------------
    @staticmethod
    def container_ip(container: str) -> str:
        return f"198.18.1.{10 + int(container.rsplit('c', 1)[1])}"

    def node_count(self) -> int:
        with netns.entered(self.node):
            with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
                return int(f.read())

    def node_stats(self) -> dict[str, int]:
        """The node's per-CPU conntrack counters, summed."""
        with netns.entered(self.node):
            with open("/proc/thread-self/net/stat/nf_conntrack") as f:
                return sum_stat(f.read())

    def node_entries(self) -> list[tuple[Flow, str]]:
        """(original tuple, TCP state or '') of every entry in the node's table,
        as conntrack(8) lists it: the reference the tests compare with."""
        out = sh("conntrack", "-L", "-o", "extended", ns=self.node, check=False).stdout
        entries = []
        for line in out.splitlines():
            t = line.split()
            if len(t) < 6 or t[0] not in ("ipv4", "ipv6"):
                continue
            kv: dict[str, str] = {}
            for tok in t[4:]:
                k, _, v = tok.partition("=")
                kv.setdefault(k, v)
            state = t[5] if "=" not in t[5] and t[5].isupper() else ""
            entries.append((Flow(t[2], kv["src"], int(kv.get("sport", 0)), kv["dst"],
                                 int(kv.get("dport", 0))), state))
        return entries

    # -- load generators ----------------------------------------------------------------
    def _pace(self, t0: float, i: int, rate: float | None) -> None:
        if rate:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def _generate(self, kind: str, container: str, count: int, rate: float | None, one) -> Report:
        """Run `one(i, src) -> (flow, ok)` count times inside the container,
        paced to `rate` flows per second, into a Report."""
        rep = Report(kind, container, count)
        src = self.container_ip(container)
        t0 = time.perf_counter()
        with netns.entered(container):
            for i in range(count):
                self._pace(t0, i, rate)
                flow, ok = one(i, src)
                (rep.flows if ok else rep.failed).append(flow)
        rep.seconds = time.perf_counter() - t0
        return rep

    @staticmethod
    def _exchange(src: str, dst: tuple[str, int], payload: bytes) -> tuple[socket.socket, int]:
        """A connected TCP socket from `src` that sent `payload` and got an answer
        (or an OSError); returns (socket, source port)."""
        s = socket.socket()
        s.settimeout(2)
        try:
            s.bind((src, 0))
            sport = s.getsockname()[1]
            s.connect(dst)
            s.sendall(payload)
            if not s.recv(64):
                raise OSError("no answer")
            return s, sport
        except OSError:
            s.close()
            raise

    def tcp_short(self, container: str, count: int, rate: float | None = None,
                  dst: tuple[str, int] = (UPLINK_PEER, TCP_PORT)) -> Report:
        """Request/response TCP connections, closed by both ends: TIME_WAIT."""
        def one(i, src):
            try:
                s, sport = self._exchange(src, dst, b"GET / HTTP/1.0\r\n\r\n")
            except OSError:
                return Flow("tcp", src, 0, *dst), False
            try:
                s.shutdown(socket.SHUT_WR)
                s.recv(64)            # the server's FIN
                return Flow("tcp", src, sport, *dst), True
            except OSError:
                return Flow("tcp", src, sport, *dst), False
            finally:
                s.close()
        return self._generate("tcp_short", container, count, rate, one)

    def tcp_established(self, container: str, count: int, rate: float | None = None,
                        dst: tuple[str, int] = (UPLINK_PEER, TCP_PORT)) -> Report:
        """Long-lived connections (held until release()/down): ESTABLISHED."""
        def one(i, src):
            try:
                s, sport = self._exchange(src, dst, b"hello")
            except OSError:
                return Flow("tcp", src, 0, *dst), False
            self.held.append(s)
            return Flow("tcp", src, sport, *dst), True
        return self._generate("tcp_established", container, count, rate, one)

    def syn_sent(self, container: str, count: int, rate: float | None = None) -> Report:
        """Connections whose SYN the peer drops: SYN_SENT (sockets held)."""
        dst = (UPLINK_PEER, BLACKHOLE_PORT)

        def one(i, src):
            s = socket.socket()
            s.bind((src, 0))
            sport = s.getsockname()[1]
            s.setblocking(False)
            try:
                s.connect(dst)
            except BlockingIOError:
                pass
            self.held.append(s)
            return Flow("tcp", src, sport, *dst), True
        return self._generate("syn_sent", container, count, rate, one)

    def udp_flows(self, container: str, count: int, rate: float | None = None,
                  dst: tuple[str, int] = (UPLINK_PEER, UDP_PORT), timeout: float = 1.0,
                  drop_watch=None) -> Report:
        """Query/answer UDP flows, one socket (one source port) each; a flow
        counts as done when its answer arrives, as failed when none does."""
        def one(i, src):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                flow = Flow("udp", src, self._bind_next(s, container, src), *dst)
                try:
                    s.sendto(b"q%d" % i, dst)
                    return flow, _await_answer(s, timeout, drop_watch)
                except OSError:
                    return flow, False
            finally:
                s.close()
        return self._generate("udp", container, count, rate, one)

    def _bind_next(self, s: socket.socket, container: str, src: str) -> int:
        """Bind a UDP socket to the container's next unused source port, so
        every flow is a new 5-tuple (an ephemeral port could come back
        while its old entry lives, and two flows would share one entry)."""
        # Each container gets its own slice of ports: after MASQUERADE all
        # flows leave from the node's one address, and two containers using
        # the same source port at the same moment race for that NAT tuple
        # (insert_failed): real, but not the load asked for.
        slice_ = 55000 // len(self.containers)
        first = 10000 + self.containers.index(container) * slice_
        port = self._udp_port.get(container, first)
        while port < first + slice_:
            try:
                s.bind((src, port))
                self._udp_port[container] = port + 1
                return port
            except OSError:
                port += 1
        raise LabError(f"{container} has used all its UDP source ports: use more containers")

    def vxlan_traffic(self, count: int) -> Report:
        """`count` UDP flows from node2 to node over the VXLAN overlay. The
        node tracks each inner flow after decapsulation, and the outer
        udp/4789 packets as one more entry (outer source port pinned)."""
        if not self.node2:
            raise LabError("the lab was started without --vxlan")
        rep = Report("vxlan", self.node2, count)
        t0 = time.perf_counter()
        with netns.entered(self.node2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((OVERLAY[1], 0))
                sport = s.getsockname()[1]
                for i in range(count):
                    s.sendto(b"v", (OVERLAY[0], 7000 + i))
                    rep.flows.append(Flow("udp", OVERLAY[1], sport, OVERLAY[0], 7000 + i))
            finally:
                s.close()
        rep.flows.append(Flow("udp", UNDERLAY[1], VXLAN_PORT, UNDERLAY[0], VXLAN_PORT))
        rep.seconds = time.perf_counter() - t0
        return rep

    def flood(self, container: str, seconds: float, dport_base: int = 20000) -> Report:
        """Unanswered UDP packets as fast as one process can send them, each
        to a new destination port (a new flow): with the table full, a
        flood of table-full drops. Reports packets sent, not flows made."""
        rep = Report("flood", container, 0)
        src = self.container_ip(container)
        t0 = time.perf_counter()
        sent = 0
        with netns.entered(container):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((src, 0))
                sendto, dst, end = s.sendto, UPLINK_PEER, t0 + seconds
                while time.perf_counter() < end:
                    for p in range(dport_base, dport_base + 1000):
                        sendto(b"f", (dst, p))
                    sent += 1000
            finally:
                s.close()
        rep.requested = sent
        rep.seconds = time.perf_counter() - t0
        return rep

    # -- table full ---------------------------------------------------------------------
    def table_full(self, container: str, k: int = 200, admit: int = 100) -> TableFull:
        """Lower the global nf_conntrack_max so that the node's table takes
        only `admit` more entries, open k new UDP flows from `container`,
        restore the limit. Dropped = flows that got no answer.

        Run it with no unassured flows still active (release() first):
        a full table evicts unassured entries (early_drop), and their next
        packets would be dropped without a generator seeing it."""
        old = Path(CT_MAX).read_text().strip()
        root_count = int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())
        limit = self.node_count() + admit
        if root_count and limit < root_count + 100:
            raise LabError(f"this host's own table holds {root_count} entries: lowering "
                           f"nf_conntrack_max to {limit} would drop its traffic; raise admit")
        self.save_sysctl(CT_MAX, old)
        before = self.node_stats()
        t0 = time.perf_counter()
        with netns.entered(self.node):
            stat_fd = os.open("/proc/thread-self/net/stat/nf_conntrack", os.O_RDONLY)
        try:
            Path(CT_MAX).write_text(str(limit))
            watch = _DropWatch(stat_fd)
            rep = self.udp_flows(container, k, timeout=1.0, drop_watch=watch)
        finally:
            Path(CT_MAX).write_text(old)
            os.close(stat_fd)
            self.forget_sysctl(CT_MAX)
        after = self.node_stats()
        return TableFull(k=k, limit=limit, admitted=rep.flows, dropped=rep.failed,
                         kernel_drop=after["drop"] - before["drop"],
                         kernel_early_drop=after["early_drop"] - before["early_drop"],
                         count_after=self.node_count(), seconds=time.perf_counter() - t0)

    def _state(self) -> tuple[Path, dict]:
        path = STATE_DIR / f"{self.prefix}state.json"
        try:
            return path, json.loads(path.read_text())
        except (OSError, ValueError):
            return path, {}

    def save_sysctl(self, path: str, value: str) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        f, st = self._state()
        st.setdefault("sysctl", {}).setdefault(path, value)
        f.write_text(json.dumps(st))

    def forget_sysctl(self, path: str) -> None:
        f, st = self._state()
        st.get("sysctl", {}).pop(path, None)
        f.write_text(json.dumps(st))


def _restore(ns: str, rules: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=rules, text=True,
                   check=True, capture_output=True)


def sum_stat(text: str) -> dict[str, int]:
    lines = text.split("\n")
    names = lines[0].split()
    total = dict.fromkeys(names, 0)
    for line in lines[1:]:
        for n, v in zip(names, line.split()):
            total[n] += int(v, 16)
    return total


class _DropWatch:
    """Reads the node's `drop` counter (an open /proc stat file) to stop
    waiting early for an answer that cannot come."""

    def __init__(self, fd: int):
        self.fd = fd
        self.last = self.read()

    def read(self) -> int:
        return sum_stat(os.pread(self.fd, 1 << 16, 0).decode())["drop"]

    def moved(self) -> bool:
        now = self.read()
        moved, self.last = now != self.last, now
        return moved


def _await_answer(s: socket.socket, timeout: float, watch: _DropWatch | None) -> bool:
    """Whether an answer arrives on s. With a watch, stop after a short grace
    once the kernel's drop counter has moved (the query was dropped)."""
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    try:
        deadline = time.monotonic() + timeout
        step = 0.001 if watch else timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if sel.select(min(step, left)):
                s.recv(2048)
                return True
            if watch is not None and watch.moved():
                # Answers take well under a millisecond here; a short grace
                # keeps "no answer" (not the counter) the evidence of a drop.
                deadline = min(deadline, time.monotonic() + 0.005)
                watch = None
                step = 0.005
    finally:
        sel.close()


def _main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="scripts/lab", description="The cttrace conntrack lab.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab and run its scenario commands, then hold it")
    up.add_argument("--containers", type=int, default=2)
    up.add_argument("--vxlan", action="store_true", help="add a second node joined by VXLAN (udp/4789)")
    down = sub.add_parser("down", help="remove every trace of a lab (also after a crash)")
    status = sub.add_parser("status", help="is a lab up?")
    load = sub.add_parser("load", help="make load in the lab that is up (or, with none up, in one "
                          "brought up for this run and taken down after it), and report it")
    load.add_argument("--containers", type=int, help="with no lab up: containers (default 2)")
    load.add_argument("--vxlan", action="store_true", help="with no lab up: add node2")
    load.add_argument("--tcp-short", type=int, default=0, metavar="N")
    load.add_argument("--established", type=int, default=0, metavar="N")
    load.add_argument("--udp", type=int, default=0, metavar="N")
    load.add_argument("--syn", type=int, default=0, metavar="N")
    load.add_argument("--rate", type=float, help="flows per second per generator")
    load.add_argument("--table-full", type=int, default=0, metavar="K",
                      help="then open K new flows with room for K/2 (lowers nf_conntrack_max meanwhile)")
    load.add_argument("--hold", type=float, default=0, metavar="S", help="keep the lab up S seconds")
    for p in (up, down, status, load):
        p.add_argument("--prefix", default=LAB_PREFIX, help=argparse.SUPPRESS)   # tests' own labs
    a = ap.parse_args(argv)
    try:
        if a.cmd == "down":
            for line in lab_down(a.prefix):
                print(line)
            return 0
        if a.cmd == "status":
            left = lab_namespaces(a.prefix)
            print("lab up: " + " ".join(left) if left else "no lab")
            return 0 if left else 1
        if a.cmd == "up":
            lab = Lab(a.containers, a.vxlan, a.prefix)
            lab.up()
            lab.server = None          # the servers outlive this command; 'down' kills them
            print(f"lab up: node {lab.node}, peer {lab.peer} ({UPLINK_PEER}), containers "
                  f"{' '.join(lab.containers)}" + (f", node2 {lab.node2}" if lab.node2 else ""))
            return 0
        if lab_namespaces(a.prefix):            # the lab that is up: load it, leave it up
            lab = Lab.attach(a.prefix)
            if a.containers not in (None, len(lab.containers)) or (a.vxlan and not lab.node2):
                raise LabError(f"the lab that is up has {len(lab.containers)} containers"
                               + (" and node2" if lab.node2 else ", no node2") + ": drop --containers/"
                               "--vxlan, or 'scripts/lab down' and 'up' with them")
            try:
                _load(lab, a)
            finally:
                lab.save_ports()
                lab.release()
            if a.established or a.syn:
                print("the held connections (--established, --syn) were closed as this command ended")
            return 0
        with Lab(a.containers or 2, a.vxlan, a.prefix) as lab:
            _load(lab, a)
        return 0
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1


def _load(lab: Lab, a) -> None:
    """The load `scripts/lab load` asks for, reported line by line."""
    for c in lab.containers:
        for n, gen in ((a.tcp_short, lab.tcp_short), (a.established, lab.tcp_established),
                       (a.udp, lab.udp_flows), (a.syn, lab.syn_sent)):
            if n:
                print(gen(c, n, a.rate))
    print(f"node table: {lab.node_count()} entries")
    if a.table_full:
        # SYN_SENT entries are unassured: a full table may evict them,
        # and their retransmitted SYNs would then be dropped too.
        lab.release()
        r = lab.table_full(lab.containers[0], a.table_full, a.table_full // 2)
        print(f"table full: {len(r.admitted)} admitted, {len(r.dropped)} dropped "
              f"(kernel drop +{r.kernel_drop}, early_drop +{r.kernel_early_drop}), "
              f"limit {r.limit}, {r.seconds:.2f} s")
    if a.hold:
        time.sleep(a.hold)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("lab: needs root (network namespaces, sysctls): run with sudo")
    sys.exit(_main(sys.argv[1:]))
