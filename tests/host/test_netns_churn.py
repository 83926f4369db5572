"""Namespace churn while tracing: hundreds of namespaces made and deleted
during one `cttrace drops` run (inode numbers are reused quickly), each
with rule drops with and without a conntrack entry. Every drop must be
reported once, under its own namespace, as a rule (the kernel counted no
conntrack refusal in any of them), with the exact tuple sent."""

import os
import socket
from collections import Counter

import pytest

from tests import lab as L
from tests.host.test_drops import Drops
from tracer.kernel import netns

pytestmark = pytest.mark.usefixtures("needs_tracepoint")

ROUNDS = 200


def _one(i: int) -> tuple[int, list[tuple]]:
    """A namespace that drops 2 UDP packets in OUTPUT (an entry attached)
    and 2 in raw OUTPUT (none), then is deleted. Returns (inode, tuples)."""
    with L.Netns("churn") as n:
        n.run("iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP")
        n.run("iptables", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "10", "-j", "DROP")
        inode = os.stat(f"/run/netns/{n.name}").st_ino
        sent = []
        with netns.entered(n.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", 0))
                sport = s.getsockname()[1]
                for k, dport in enumerate((9, 9, 10, 10)):
                    try:
                        s.sendto(b"x%d" % k, ("127.0.0.%d" % (2 + k), dport))
                    except OSError:          # EPERM: the drop, as the sender sees it
                        pass
                    sent.append(("udp", "127.0.0.1", sport, "127.0.0.%d" % (2 + k), dport))
            finally:
                s.close()
        return inode, sent


def test_hundreds_of_namespaces_come_and_go(tmp_path):
    d = Drops(tmp_path, "--port", "9", "--port", "10")
    expected: Counter = Counter()
    inodes = Counter()
    for i in range(ROUNDS):
        inode, sent = _one(i)
        inodes[inode] += 1
        for t in sent:
            expected[(inode, *t)] += 1
    events, err = d.stop()
    assert any(n > 1 for n in inodes.values()), "no inode was reused: the test did not churn"
    got = Counter((e["netns"], e["proto"], e["src"], e["sport"], e["dst"], e["dport"]) for e in events)
    assert got == expected
    assert {e["reason"] for e in events} == {"rule"}, Counter(e["reason"] for e in events)
    assert {e["ct_attached"] for e in events if e["dport"] == 9} == {True}
    assert {e["ct_attached"] for e in events if e["dport"] == 10} == {False}
    assert " 0 lost" in err and "0 table_full" in err, err
