"""The lab's ground truth agrees with the kernel (node's table, counters),
and the lab leaves nothing behind."""

import os
import subprocess
from pathlib import Path

import pytest

from tests import lab as L

PREFIX = "ctlabt-"     # not the interactive lab's prefix: tests never touch a developer's lab


def _links():
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sorted(l.split(":")[1].strip() for l in out.splitlines())


def _ct_max():
    return Path(L.CT_MAX).read_text()


@pytest.fixture
def lab():
    L.lab_down(PREFIX)
    with L.Lab(containers=2, vxlan=True, prefix=PREFIX) as lab:
        yield lab
    assert not L.lab_namespaces(PREFIX)


def test_scenarios_match_the_nodes_table(lab):
    c1, c2 = lab.containers
    reports = [
        lab.tcp_short(c1, 30), lab.tcp_established(c1, 10), lab.udp_flows(c1, 20), lab.syn_sent(c1, 5),
        lab.tcp_short(c2, 10, dst=(L.SERVICE_VIP, 80)), lab.udp_flows(c2, 15, dst=(L.SERVICE_VIP, 53)),
        lab.tcp_established(c2, 3), lab.vxlan_traffic(10),
    ]
    state_of = {"tcp_short": "TIME_WAIT", "tcp_established": "ESTABLISHED", "syn_sent": "SYN_SENT",
                "udp": "", "vxlan": ""}
    want = {}
    for r in reports:
        assert not r.failed, r
        assert len(r.flows) == r.requested + (r.kind == "vxlan")    # + the outer udp/4789 flow
        for f in r.flows:
            want[f] = state_of[r.kind]
    listed = lab.node_entries()
    assert dict(listed) == want
    assert len(listed) == len(want) == lab.node_count() == 30 + 10 + 20 + 5 + 10 + 15 + 3 + 10 + 1
    assert sum(1 for f in want if f.dport == L.VXLAN_PORT) == 1
    # the service flows were NATed to the peer, and are listed by their original tuple
    assert sum(1 for f in want if f.dst == L.SERVICE_VIP) == 25


def test_table_full_ground_truth(lab):
    old = _ct_max()
    before = lab.node_count()
    r = lab.table_full(lab.containers[0], k=300, admit=100)
    assert _ct_max() == old                                   # restored
    assert len(r.admitted) + len(r.dropped) == 300
    assert r.dropped and len(r.dropped) == r.kernel_drop     # every unanswered flow, and only those
    assert r.limit == before + 100
    listed = {f for f, _ in lab.node_entries()}
    assert len(listed) == lab.node_count() == r.count_after
    assert not listed & set(r.dropped)
    # admitted flows stay unless the full table evicted them (early_drop, or
    # the gc worker's eviction, which the kernel does not count)
    assert listed - set(r.admitted) == set()
    assert len(r.admitted) - len(listed) >= r.kernel_early_drop


def test_rates_are_reported_and_pacing_holds(lab):
    r = lab.udp_flows(lab.containers[0], 50, rate=500)
    assert len(r.flows) == 50 and r.rate > 0
    assert r.rate <= 500 * 1.05      # pacing never exceeds the asked rate


def test_refuses_to_start_over_a_running_lab(lab):
    with pytest.raises(L.LabError, match="already up"):
        L.Lab(prefix=PREFIX).up()
    assert len(L.lab_namespaces(PREFIX)) == 5      # the running lab is untouched


def test_down_cleans_up_after_a_crash():
    L.lab_down(PREFIX)
    old = _ct_max()
    lab = L.Lab(containers=1, prefix=PREFIX).up()
    server_pid = int(subprocess.run(["ip", "netns", "pids", lab.peer], capture_output=True,
                                    text=True).stdout.split()[0])
    # a crash in the middle of the table-full scenario: limit lowered, saved
    lab.save_sysctl(L.CT_MAX, old.strip())
    Path(L.CT_MAX).write_text("1000")
    lab.server = None                    # the process "died": nobody will terminate it
    done = L.lab_down(PREFIX)
    assert _ct_max() == old
    assert not L.lab_namespaces(PREFIX)
    assert not os.path.exists(f"/proc/{server_pid}") or \
        Path(f"/proc/{server_pid}/stat").read_text().split()[2] == "Z"
    assert any("restored" in d for d in done)


def test_up_and_down_20_times_leaves_nothing():
    L.lab_down(PREFIX)
    links, ct_max = _links(), _ct_max()
    for _ in range(20):
        lab = L.Lab(containers=2, vxlan=True, prefix=PREFIX).up()
        assert len(L.lab_namespaces(PREFIX)) == 5
        lab.down()
        assert not L.lab_namespaces(PREFIX)
        assert not (L.STATE_DIR / f"{PREFIX}state.json").exists()
    assert _links() == links
    assert _ct_max() == ct_max
