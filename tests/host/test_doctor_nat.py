"""doctor and NAT on the lab's node, against the kernel's counters and
conntrack(8): SNAT port exhaustion is not a full table, a full table still
is one, and the UDP DNS race through a DNAT'd service is named as such.

Run under `flock /tmp/cttrace-host.lock` (the table-full scene lowers the
global nf_conntrack_max for a moment)."""

import json
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests import lab as L
from tests import natlab
from tests.host.conftest import CTTRACE

PREFIX = "ctlabnat-"
TABLE_FULL_IDS = {"table_full", "table_filling", "dropping_now", "dropped_before"}


@pytest.fixture
def lab():
    L.lab_down(PREFIX)
    with L.Lab(containers=2, prefix=PREFIX) as lab:
        yield lab


def doctor(lab, *args):
    r = subprocess.run([CTTRACE, "doctor", "--json", "--netns", lab.node, *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"findings", "state"}
    return {f["id"]: f for f in out["findings"]}, out["state"]


def snat_usage_from_conntrack(lab):
    """(proto, SNAT address, destination, port) -> entries, from conntrack -L:
    entries whose reply goes elsewhere than the original source."""
    use = Counter()
    for proto, osrc, osp, odst, odp, rsrc, rsp, rdst, rdp in natlab.reply_tuples(lab):
        if (rdst, rdp) != (osrc, osp):
            use[(proto, rdst, rsrc, rsp)] += 1
    return use


def test_snat_port_exhaustion_is_not_a_full_table(lab):
    c1 = lab.containers[0]
    sc = natlab.snat_exhaustion(lab, c1, 50, ports=(20000, 20001))
    # ground truth: two flows got the two ports, every other one clashed at confirm
    assert len(sc.answered) == 2 and len(sc.unanswered) == 48
    assert sc.delta("insert_failed") == sc.delta("drop") == 48
    assert lab.node_count() < 10                               # the table is nearly empty

    found, state = doctor(lab, "--window", "0.5")
    assert not TABLE_FULL_IDS & set(found), found
    assert "dns_race" not in found                             # no DNAT'd udp/53 here
    f = found["snat_port_exhaustion"]
    assert f["severity"] == "warning"                          # nothing failed during the window
    assert "2 of 2 ports" in f["message"] and L.UPLINK_NODE in f["message"]
    assert "20000-20001" in f["evidence"]
    assert "--random-fully" in f["fix"] and "--to-ports 1024-65535" in f["fix"]
    # usage per (SNAT address, destination, port, protocol) equals conntrack -L
    ref = snat_usage_from_conntrack(lab)
    got = {(u["proto"], u["snat"], u["dst"], u["dport"]): u["entries"] for u in state["nat"]["snat"]}
    assert got == dict(ref)
    assert got[("udp", L.UPLINK_NODE, L.UPLINK_PEER, L.UDP_PORT)] == 2
    # the kernel's counters, exactly (the namespace's counters start at its creation)
    kern = lab.node_stats()
    assert state["stats"]["insert_failed"] == kern["insert_failed"] == 48
    assert state["stats"]["drop"] == kern["drop"] == 48

    # The exact fix doctor printed, run as printed: the range is wide again.
    rule_fix = [l for l in f["fix"].splitlines() if l.startswith("iptables ")]
    assert len(rule_fix) == 1
    subprocess.run(["ip", "netns", "exec", lab.node, "sh", "-c", rule_fix[0]], check=True)
    sc2 = natlab.Scene(lab.node_stats(), {})
    rep = lab.udp_flows(c1, 20, timeout=1.0)
    assert len(rep.flows) == 20 and not rep.failed
    assert lab.node_stats()["insert_failed"] == sc2.before["insert_failed"]
    found, _ = doctor(lab, "--window", "0.2")
    assert "snat_port_exhaustion" not in found


def test_snat_exhaustion_now_is_critical(lab):
    c1 = lab.containers[0]
    natlab.snat_exhaustion(lab, c1, 5, ports=(20000, 20001))
    stop = threading.Event()

    def keep_failing():
        while not stop.is_set():
            lab.udp_flows(c1, 3, timeout=0.05)
    t = threading.Thread(target=keep_failing)
    t.start()
    try:
        found, state = doctor(lab, "--window", "1")
    finally:
        stop.set()
        t.join()
    assert found["snat_port_exhaustion"]["severity"] == "critical"
    assert state["deltas"]["insert_failed"] > 0
    assert state["deltas"]["insert_failed"] == state["deltas"]["drop"]
    assert not TABLE_FULL_IDS & set(found)


def test_full_table_is_still_a_full_table(lab):
    c1 = lab.containers[0]
    old = Path(L.CT_MAX).read_text().strip()
    lab.save_sysctl(L.CT_MAX, old)
    before = lab.node_stats()
    try:
        Path(L.CT_MAX).write_text(str(lab.node_count() + 100))
        r = lab.udp_flows(c1, 160, timeout=0.2)
        assert r.failed
        stop = threading.Event()

        def keep_dropping():
            while not stop.is_set():
                lab.udp_flows(c1, 5, timeout=0.05)
        t = threading.Thread(target=keep_dropping)
        t.start()
        try:
            found, state = doctor(lab, "--window", "1")
        finally:
            stop.set()
            t.join()
    finally:
        Path(L.CT_MAX).write_text(old)
        lab.forget_sysctl(L.CT_MAX)
    after = lab.node_stats()
    assert found["table_full"]["severity"] == "critical"
    assert found["dropping_now"]["severity"] == "critical"
    assert "snat_port_exhaustion" not in found and "dns_race" not in found
    assert after["insert_failed"] == before["insert_failed"]           # no clash: all table full
    assert state["deltas"]["drop"] > 0 and state["deltas"]["insert_failed"] == 0
    assert state["max_scope"] == "global"                              # this kernel: one limit


def test_dns_race_through_the_service_vip(lab):
    sc = natlab.dns_race(lab, rounds=5, same_socket_rounds=3)
    # ground truth: each race loses exactly one query; the same-socket pairs are settled
    assert len(sc.unanswered) == 5
    assert sc.delta("insert_failed") == sc.delta("drop") == 5
    assert sc.delta("clashres") == 3                                 # /proc's name for clash_resolve
    found, state = doctor(lab, "--window", "0.5")
    f = found["dns_race"]
    assert f["severity"] == "warning"
    assert f"{L.SERVICE_VIP}:53" in f["message"]
    assert f"{L.SERVICE_VIP}:53 -> {L.UPLINK_PEER}:53" in f["evidence"]
    assert "use-vc" in f["fix"] and "--random-fully" in f["fix"]
    assert "single-request-reopen is not needed" in f["fix"]          # 6.18 settles same-socket
    assert not TABLE_FULL_IDS & set(found)
    assert "snat_port_exhaustion" not in found
    kern = lab.node_stats()
    assert state["stats"]["insert_failed"] == kern["insert_failed"] == 5
    assert state["stats"]["clash_resolve"] == kern["clashres"] == 3
    dns = [d for d in state["nat"]["dnat"] if d["port"] == 53]
    ref = [t for t in natlab.reply_tuples(lab) if t[3] == L.SERVICE_VIP and t[4] == 53]
    assert dns[0]["entries"] == len(ref) == 5 + 3
    assert dns[0]["backends"] == {f"{L.UPLINK_PEER}:53": len(ref)}
