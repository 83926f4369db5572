"""NAT scenes on the lab's node (tests/lab.py), each with exact ground truth:

- snat_exhaustion: one container's UDP flows MASQUERADEd onto a tiny port
  range; flows beyond the range clash at confirm (insert_failed + drop);
- dns_race: the UDP DNS race through the node's DNAT'd service VIP
  (198.18.200.10:53, like kube-proxy in front of CoreDNS), made
  deterministic by holding packets after NAT and before confirmation
  (NFQUEUE in a postrouting chain after the NAT hook, priority 200):
    * two containers query from the same source port: SNAT keeps that port
      for both (the first entry is not confirmed yet, so the port looks
      free), the second clashes on its reply tuple at confirm and is
      dropped: insert_failed +1, drop +1 (the race between sockets that
      no kernel settles);
    * one socket sends two queries (A and AAAA) at once: both entries have
      the same tuples; the kernel (5.0+) settles the clash: clash_resolve
      +1, no drop.

Everything runs in the lab's namespaces and is removed with them.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from tests import lab as L
from tests.nfqueue import Queue
from tracer.kernel import netns


@dataclass
class Scene:
    """What a scene did and what the kernel counted meanwhile."""
    before: dict
    after: dict
    answered: list = field(default_factory=list)       # Flow
    unanswered: list = field(default_factory=list)     # Flow

    def delta(self, name: str) -> int:
        return self.after[name] - self.before[name]


def _node(lab: L.Lab, *cmd: str) -> None:
    L.sh(*cmd, ns=lab.node)


def snat_exhaustion(lab: L.Lab, container: str, flows: int, ports=(20000, 20001)) -> Scene:
    """MASQUERADE `container`'s UDP onto `ports`, then `flows` query/answer
    flows to the peer's udp/53 (each from its own source port)."""
    ip = lab.container_ip(container)
    _node(lab, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-s", f"{ip}/32", "-o", "up0",
          "-p", "udp", "-j", "MASQUERADE", "--to-ports", f"{ports[0]}-{ports[1]}")
    before = lab.node_stats()
    with netns.entered(lab.node):
        fd = os.open("/proc/thread-self/net/stat/nf_conntrack", os.O_RDONLY)
    try:
        rep = lab.udp_flows(container, flows, timeout=1.0, drop_watch=L._DropWatch(fd))
    finally:
        os.close(fd)
    return Scene(before, lab.node_stats(), rep.flows, rep.failed)


QUEUE_NUM = 4242


class _Held:
    """Packets to udp/53 queued after NAT, before confirmation (removed on exit)."""

    def __init__(self, lab: L.Lab):
        self.lab = lab

    def __enter__(self) -> Queue:
        _node(self.lab, "iptables", "-t", "mangle", "-N", "ctlab-hold")
        _node(self.lab, "iptables", "-t", "mangle", "-A", "ctlab-hold", "-p", "udp", "--dport", "53",
              "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM), "--queue-bypass")
        # iptables' own chains run before the NAT hook (priority 100); this one after it.
        _node(self.lab, "nft", "add chain ip mangle ctlab-late "
              "{ type filter hook postrouting priority 200; policy accept; }")
        _node(self.lab, "nft", "add rule ip mangle ctlab-late jump ctlab-hold")
        with netns.entered(self.lab.node):
            self.q = Queue(QUEUE_NUM)
        return self.q

    def __exit__(self, *exc) -> None:
        self.q.close()
        _node(self.lab, "nft", "delete chain ip mangle ctlab-late")
        _node(self.lab, "iptables", "-t", "mangle", "-F", "ctlab-hold")
        _node(self.lab, "iptables", "-t", "mangle", "-X", "ctlab-hold")


def _answers(socks, timeout: float = 1.0) -> list[int]:
    """Answers received per socket within `timeout`."""
    got = [0] * len(socks)
    end = time.monotonic() + timeout
    for i, s in enumerate(socks):
        s.setblocking(False)
    while time.monotonic() < end:
        for i, s in enumerate(socks):
            try:
                while True:
                    s.recv(2048)
                    got[i] += 1
            except BlockingIOError:
                pass
        time.sleep(0.01)
    return got


def dns_race(lab: L.Lab, rounds: int = 5, same_socket_rounds: int = 3,
             first_port: int = 40000) -> Scene:
    """`rounds` races of two containers' queries from one source port, and
    `same_socket_rounds` A+AAAA pairs from one socket, all to the service
    VIP udp/53, each pair held until both are NATed, then let go in order."""
    c1, c2 = lab.containers[:2]
    vip = (L.SERVICE_VIP, L.UDP_PORT)
    before = lab.node_stats()
    sc = Scene(before, {})
    with _Held(lab) as q:
        for r in range(rounds):
            port = first_port + r
            socks = []
            for c in (c1, c2):
                with netns.entered(c):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((lab.container_ip(c), port))
                    s.sendto(b"A? r%d" % r, vip)
                socks.append(s)
            for pid in q.packets(2):
                q.verdict(pid)
            got = _answers(socks)
            for c, s, n in zip((c1, c2), socks, got):
                flow = L.Flow("udp", lab.container_ip(c), port, *vip)
                (sc.answered if n else sc.unanswered).append(flow)
                s.close()
        for r in range(same_socket_rounds):
            port = first_port + rounds + r
            with netns.entered(c1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((lab.container_ip(c1), port))
                s.sendto(b"A? s%d" % r, vip)
                s.sendto(b"AAAA? s%d" % r, vip)
            for pid in q.packets(2):
                q.verdict(pid)
            n = _answers([s])[0]
            flow = L.Flow("udp", lab.container_ip(c1), port, *vip)
            sc.answered += [flow] * n
            sc.unanswered += [flow] * (2 - n)
            s.close()
    sc.after = lab.node_stats()
    return sc


def reply_tuples(lab: L.Lab) -> list[tuple[str, str, int, str, int, str, int, str, int]]:
    """(proto, orig src, sport, orig dst, dport, reply src, sport, reply dst, dport)
    of every entry of the node, as conntrack(8) lists them: the reference."""
    out = L.sh("conntrack", "-L", "-o", "extended", ns=lab.node, check=False).stdout
    rows = []
    for line in out.splitlines():
        t = line.split()
        if len(t) < 6 or t[0] not in ("ipv4", "ipv6"):
            continue
        src = [v.split("=", 1)[1] for v in t if v.startswith("src=")]
        dst = [v.split("=", 1)[1] for v in t if v.startswith("dst=")]
        sp = [int(v.split("=", 1)[1]) for v in t if v.startswith("sport=")]
        dp = [int(v.split("=", 1)[1]) for v in t if v.startswith("dport=")]
        if len(src) < 2 or len(sp) < 2:
            continue
        rows.append((t[2], src[0], sp[0], dst[0], dp[0], src[1], sp[1], dst[1], dp[1]))
    return rows
