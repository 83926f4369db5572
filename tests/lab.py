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

from tracer import netns

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
