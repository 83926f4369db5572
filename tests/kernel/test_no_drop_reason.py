"""Kernels without skb drop reasons (before 5.17, e.g. Debian 11's 5.10):
`cttrace drops --backend tracepoint` finds netfilter's drops by kfree_skb's
call site (nf_hook_slow) and is exact against the lab's ground truth, rule
drops included. On kernels with drop reasons this is the host stage's test
(tests/host/test_drops.py), so it skips here."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE
from tracer.kernel import features as F


def test_tracepoint_backend_by_call_site(lab, tmp_path):
    how = F.drop_filter()
    if how is None or how[0] != "location":
        pytest.skip("this kernel has drop reasons: the tracepoint backend is tested on the host")
    L.sh("iptables", "-A", "FORWARD", "-p", "udp", "--dport", "5353", "-j", "DROP", ns=lab.node)
    node = os.stat(f"/run/netns/{lab.node}").st_ino
    ready, out, err = tmp_path / "ready", open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
    p = subprocess.Popen([CTTRACE, "drops", "--json", "--backend", "tracepoint", "--netns", lab.node,
                          "--ready-file", str(ready)], stdout=out, stderr=err)
    deadline = time.monotonic() + 600
    while not ready.exists():
        err.seek(0)
        assert p.poll() is None and time.monotonic() < deadline, err.read()
        time.sleep(0.2)
    rule = lab.udp_flows(lab.containers[1], 7, dst=(L.UPLINK_PEER, 5353), timeout=0.2)
    r = lab.table_full(lab.containers[0], k=200, admit=50)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    p.wait(120)
    out.seek(0)
    err.seek(0)
    events, summary = [json.loads(line) for line in out if line.strip()], err.read()
    full = [e for e in events if e["reason"] == "table_full"]
    assert len(full) == r.kernel_drop == len(r.dropped) > 0, summary
    assert {(e["proto"], e["src"], e["sport"], e["dst"], e["dport"]) for e in full} == \
        {(f.proto, f.src, f.sport, f.dst, f.dport) for f in r.dropped}
    rules = [e for e in events if e["reason"] == "rule"]
    assert sorted(e["sport"] for e in rules) == sorted(f.sport for f in rule.failed)
    assert len(rule.failed) == 7
    assert all(e["netns"] == node for e in events)
