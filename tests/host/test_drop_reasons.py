"""Every drop under its real cause, all causes at once (tracepoint backend).

On the lab's node, concurrently, from four containers (threads, so both
CPUs): table-full refusals (the global limit lowered), SNAT port exhaustion
(MASQUERADE onto two ports: clashes at confirm), a raw-table DROP, an
INVALID-state DROP (TCP SYN+FIN), and a filter DROP of new flows. Ground
truth, exact:
- table_full = the node's drop delta less its insert_failed delta (a clash
  at confirm counts in both);
- insert_failed = the node's insert_failed delta;
- rule = the packet counters of the three DROP rules (iptables-save -c);
- tuples: every flow the generators saw fail, and every crafted packet,
  once, with the sender's (pre-NAT) tuple.
"""

import json
import os
import re
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests import lab as L
from tests.host.conftest import lab_fixture
from tests.host.test_drops import Drops
from tracer.kernel import netns

pytestmark = pytest.mark.usefixtures("needs_tracepoint")
lab = lab_fixture("ctlabr-", containers=4)

RAW_PORT, FILTER_PORT, SNAT_PORTS = 5354, 5353, (20000, 20001)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def invalid_tcp(container: str, src: str, dst: str, n: int, first_port: int = 41000) -> list[L.Flow]:
    """n TCP segments with SYN+FIN (never valid: conntrack marks them
    INVALID and attaches no entry), with correct checksums."""
    flows = []
    with netns.entered(container):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        try:
            for i in range(n):
                sport, dport = first_port + i, 8080
                hdr = struct.pack("!HHIIBBHHH", sport, dport, 1000 + i, 0, 5 << 4, 0x03, 1024, 0, 0)
                pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
                hdr = hdr[:16] + struct.pack("!H", _checksum(pseudo + hdr)) + hdr[18:]
                s.sendto(hdr, (dst, 0))
                flows.append(L.Flow("tcp", src, sport, dst, dport))
        finally:
            s.close()
    return flows


def rule_packets(node: str, comment: str = "cttrace-test-drop") -> int:
    """Packets matched by the test's DROP rules (their comment says so)."""
    total = 0
    for table in ("raw", "filter"):
        out = L.sh("iptables-save", "-c", "-t", table, ns=node).stdout
        for m in re.finditer(rf"^\[(\d+):\d+\] .*{comment}.*$", out, re.M):
            total += int(m.group(1))
    return total


def test_all_causes_at_once_exact_per_reason_and_tuple(lab, tmp_path):
    node = os.stat(f"/run/netns/{lab.node}").st_ino

    def observe():
        d = Drops(tmp_path, "--netns", lab.node)

        def stop():
            events, err = d.stop()
            summary = [l for l in err.splitlines() if l.startswith('{"summary"')]
            return events, json.loads(summary[0])["summary"]["reasons_by_netns"][str(node)], err
        return stop
    all_causes(lab, observe)


def all_causes(lab, observe) -> None:
    """The scenario and its checks. `observe()` starts a tracer and returns
    `stop()`, which gives (events as `drops --json` prints them, the
    reasons of the node's namespace, text for assertion messages). Also
    run on the kprobe backend, in the VM (tests/kernel)."""
    c1, c2, c3, c4 = lab.containers
    node = lab.node
    inode = os.stat(f"/run/netns/{node}").st_ino
    for table, rule in (
            ("raw", ["PREROUTING", "-p", "udp", "--dport", str(RAW_PORT)]),
            ("filter", ["FORWARD", "-m", "conntrack", "--ctstate", "INVALID"]),
            ("filter", ["FORWARD", "-p", "udp", "--dport", str(FILTER_PORT)])):
        L.sh("iptables", "-t", table, "-I", *rule, "-m", "comment", "--comment",
             "cttrace-test-drop", "-j", "DROP", ns=node)
    ip2 = lab.container_ip(c2)
    L.sh("iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-s", f"{ip2}/32", "-o", "up0", "-p", "udp",
         "-j", "MASQUERADE", "--to-ports", f"{SNAT_PORTS[0]}-{SNAT_PORTS[1]}", ns=node)

    stop = observe()
    before = lab.node_stats()
    out: dict = {}

    def run(name, fn):
        out[name] = fn()

    jobs = [
        ("snat", lambda: lab.udp_flows(c2, 40, timeout=0.1)),
        ("raw", lambda: lab.udp_flows(c3, 15, dst=(L.UPLINK_PEER, RAW_PORT), timeout=0.3)),
        ("filter", lambda: lab.udp_flows(c4, 15, dst=(L.UPLINK_PEER, FILTER_PORT), timeout=0.3)),
        ("invalid", lambda: invalid_tcp(c3, lab.container_ip(c3), L.UPLINK_PEER, 15)),
        ("full", lambda: lab.udp_flows(c1, 80, timeout=0.3)),
    ]
    threads = [threading.Thread(target=run, args=j) for j in jobs]
    # the other causes first, then (while they run) the table takes only 30
    # more entries (a global limit: restored after) and the full generator starts
    old = Path(L.CT_MAX).read_text().strip()
    lab.save_sysctl(L.CT_MAX, old)
    try:
        for t in threads[:-1]:
            t.start()
        time.sleep(0.5)
        Path(L.CT_MAX).write_text(str(lab.node_count() + 30))
        threads[-1].start()
        for t in threads:
            t.join(300)
    finally:
        Path(L.CT_MAX).write_text(old)
        lab.forget_sysctl(L.CT_MAX)
    after = lab.node_stats()
    events, reasons, err = stop()

    # ground truth: the kernel's counters, the rules' counters, the generators
    k_failed = after["insert_failed"] - before["insert_failed"]
    k_full = after["drop"] - before["drop"] - k_failed
    k_rule = rule_packets(node)
    assert k_full > 0 and k_failed > 0 and k_rule > 0, (k_full, k_failed, k_rule)
    assert (reasons["table_full"], reasons["insert_failed"], reasons["rule"]) == (k_full, k_failed, k_rule), err
    assert reasons["invalid"] == reasons["unknown"] == 0

    mine = [e for e in events if e["netns"] == inode]
    assert len(mine) == k_full + k_failed + k_rule          # every drop reported once (no sampling here)
    assert Counter(e["reason"] for e in mine) == Counter(
        {"table_full": k_full, "insert_failed": k_failed, "rule": k_rule}) - Counter()
    refused = [*out["full"].failed, *out["snat"].failed, *out["raw"].failed, *out["filter"].failed,
               *out["invalid"]]
    tup = lambda x: (x["proto"], x["src"], x["sport"], x["dst"], x["dport"])  # noqa: E731
    assert Counter(tup(e) for e in mine) == Counter((f.proto, f.src, f.sport, f.dst, f.dport) for f in refused)
    # the clashes happened after SNAT: the events say what the packet had become
    # a clash can only be an unconfirmed entry past source NAT: the SNAT
    # flows' (the events say what the packet had become); the filter rule's
    # drops (entries before source NAT) are rules', each of them
    snat = {(f.src, f.sport) for f in out["snat"].failed}
    filtered = {(f.src, f.sport) for f in out["filter"].failed}
    for e in mine:
        if e["reason"] == "insert_failed":
            assert (e["src"], e["sport"]) in snat
            assert e["translated"]["src"] == L.UPLINK_NODE and \
                e["translated"]["sport"] in range(SNAT_PORTS[0], SNAT_PORTS[1] + 1)
        if (e["src"], e["sport"]) in filtered:
            assert e["reason"] in ("rule", "table_full"), e     # table_full: refused before FORWARD


def test_forgetting_a_source_keeps_its_namespace_totals(lab):
    """serve (and top) forget idle sources' per-source map entries to stay
    bounded: the namespace's drops by reason, built from those maps, must not
    go down then (a Prometheus counter that decreases reads as a reset). Rule
    drops from one container (a raw-table DROP), its source forgotten: the
    totals stay, its drops are handed back once."""
    from tracer.backends import make
    c = lab.containers[2]
    src, inode = lab.container_ip(c), os.stat(f"/run/netns/{lab.node}").st_ino
    L.sh("iptables", "-t", "raw", "-I", "PREROUTING", "-p", "udp", "--dport", str(RAW_PORT),
         "-m", "comment", "--comment", "cttrace-test-forget", "-j", "DROP", ns=lab.node)
    try:
        with make("tracepoint", 2000).start() as be:
            rep = lab.udp_flows(c, 12, dst=(L.UPLINK_PEER, RAW_PORT), timeout=0.2)
            k_rule = rule_packets(lab.node, "cttrace-test-forget")
            assert len(rep.failed) == k_rule == 12
            be.poll(0)
            c1 = be.counters()
            assert c1.reasons_by_netns[inode]["rule"] == k_rule
            assert c1.drops_by_src(inode)[src] == k_rule
            assert be.forget_sources(inode, {src}) == {src: k_rule}
            c2 = be.counters()
            assert src not in c2.drops_by_src(inode)
            assert c2.reasons_by_netns[inode] == c1.reasons_by_netns[inode]
            assert be.forget_sources(inode, {src}) == {}          # once
            # new drops of the same source count from 0 again, the totals go on
            lab.udp_flows(c, 3, dst=(L.UPLINK_PEER, RAW_PORT), timeout=0.2)
            c3 = be.counters()
            assert c3.drops_by_src(inode)[src] == rule_packets(lab.node, "cttrace-test-forget") - k_rule == 3
            assert c3.reasons_by_netns[inode]["rule"] == k_rule + 3
    finally:
        L.sh("iptables", "-t", "raw", "-D", "PREROUTING", "-p", "udp", "--dport", str(RAW_PORT),
             "-m", "comment", "--comment", "cttrace-test-forget", "-j", "DROP", ns=lab.node)
