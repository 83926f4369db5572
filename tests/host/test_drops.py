"""`cttrace drops` and the tracepoint backend on this machine's kernel,
against the lab's ground truth."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE, lab_fixture
from tracer.kernel import ctnetlink
from tracer.kernel.ctevents import DELETE, INSERT, CtEvents

PREFIX = "ctlabd-"


pytestmark = pytest.mark.usefixtures("needs_tracepoint")
lab = lab_fixture(PREFIX, containers=2)


class Drops:
    """`cttrace drops --json` in the background, started and ready."""

    def __init__(self, tmp: Path, *args: str):
        ready = tmp / "ready"
        self.out = open(tmp / "out", "w+")
        self.err = open(tmp / "err", "w+")
        self.p = subprocess.Popen([CTTRACE, "drops", "--json", "--ready-file", str(ready), *args],
                                  stdout=self.out, stderr=self.err)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.err.seek(0)
                raise AssertionError(f"cttrace drops did not start: {self.err.read()}")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGINT) -> tuple[list, str]:
        time.sleep(0.3)                          # let the last events reach the ring buffer
        self.p.send_signal(sig)
        self.p.wait(30)
        self.out.seek(0)
        self.err.seek(0)
        return [json.loads(l) for l in self.out if l.strip()], self.err.read()


def _bpf_progs() -> set:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    return {(p["id"], p.get("name", "")) for p in json.loads(out.stdout or "[]")}


def _bpf_links() -> set:
    out = subprocess.run(["bpftool", "link", "show", "-j"], capture_output=True, text=True)
    return {l["id"] for l in json.loads(out.stdout or "[]")}


def test_table_full_drops_exactly(lab, tmp_path):
    # an ordinary firewall rule in the node drops udp/5353 to the peer
    L.sh("iptables", "-A", "FORWARD", "-p", "udp", "--dport", "5353", "-j", "DROP", ns=lab.node)
    node_inum = os.stat(f"/run/netns/{lab.node}").st_ino
    d = Drops(tmp_path, "--netns", lab.node)
    rule = lab.udp_flows(lab.containers[1], 7, dst=(L.UPLINK_PEER, 5353), timeout=0.2)
    assert len(rule.failed) == 7
    r = lab.table_full(lab.containers[0], k=300, admit=100)
    events, err = d.stop()
    full = [e for e in events if e["reason"] == "table_full"]
    assert len(full) == r.kernel_drop == len(r.dropped) > 0
    got = {(e["proto"], e["src"], e["sport"], e["dst"], e["dport"]) for e in full}
    want = {(f.proto, f.src, f.sport, f.dst, f.dport) for f in r.dropped}
    assert got == want
    by_ip = {lab.container_ip(c): c for c in lab.containers}
    assert all(e["netns"] == node_inum and e["container"] == by_ip[e["src"]] for e in events)
    rules = [e for e in events if e["reason"] == "rule"]
    assert sorted(e["sport"] for e in rules) == sorted(f.sport for f in rule.failed)
    assert all(e["dport"] == 5353 and e["ct_attached"] for e in rules)
    assert f"{r.kernel_drop} table_full" in err and "0 lost" in err


def test_filters_and_reason(lab, tmp_path):
    L.sh("iptables", "-A", "FORWARD", "-p", "udp", "--dport", "5353", "-j", "DROP", ns=lab.node)
    d = Drops(tmp_path, "--reason", "table_full", "--port", "53")
    lab.udp_flows(lab.containers[1], 5, dst=(L.UPLINK_PEER, 5353), timeout=0.2)
    r = lab.table_full(lab.containers[0], k=150, admit=100)
    events, _ = d.stop(signal.SIGTERM)
    assert {e["reason"] for e in events} == {"table_full"}
    assert len(events) == r.kernel_drop


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_nothing_stays_attached(tmp_path, sig):
    progs, links = _bpf_progs(), _bpf_links()
    d = Drops(tmp_path)
    assert len(_bpf_progs() - progs) >= 1           # our probe is there while it runs
    d.stop(sig)
    for _ in range(50):
        if _bpf_progs() == progs and _bpf_links() == links:
            break
        time.sleep(0.1)
    assert _bpf_progs() == progs
    assert _bpf_links() == links


def test_duration_ends_it(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([CTTRACE, "drops", "--json", "--duration", "1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert " dropped: 0 table_full, 0 insert_failed, 0 invalid, 0 rule, 0 unknown" in r.stderr
    assert time.monotonic() - t0 < 30


def test_inserts_and_deletes_from_events(lab):
    with CtEvents(lab.node) as ev:
        tcp = lab.tcp_short(lab.containers[0], 20)
        udp = lab.udp_flows(lab.containers[1], 30)
        time.sleep(0.2)
        batch = ev.poll(1.0)
        inserted = {_flow(row) for kind, row in batch.events if kind == INSERT}
        assert inserted == {(f.proto, f.src, f.sport, f.dst, f.dport) for f in tcp.flows + udp.flows}
        assert not batch.overrun and ev.overruns == 0
        L.sh("conntrack", "-D", "-p", "udp", ns=lab.node)
        time.sleep(0.2)
        batch = ev.poll(1.0)
        deleted = {_flow(row) for kind, row in batch.events if kind == DELETE}
        assert deleted == {(f.proto, f.src, f.sport, f.dst, f.dport) for f in udp.flows}
        assert ev.inserts == 50 and ev.deletes == 30


def test_event_overrun_is_counted_and_recovered(lab):
    with CtEvents(lab.node, rcvbuf=4096) as ev:       # tiny buffer, and nobody reads it
        lab.udp_flows(lab.containers[0], 400)
        batch = ev.poll(0.5)
        assert batch.overrun and ev.overruns >= 1
        assert len(batch.events) < 400                   # events were lost ...
        rows = ev.resync()                               # ... and the dump recovers the state
        # every flow the test made (the node may hold an entry of its own:
        # one run in CI-like conditions saw 401), and as many rows as the kernel counts
        src, dec = lab.container_ip(lab.containers[0]), ctnetlink.NetlinkDecoder()
        assert sum(1 for r in rows if r[0] == 17 and dec.addr(r[2])[1] == src) == 400
        assert len(rows) == lab.node_count()


def _flow(row):
    dec = ctnetlink.NetlinkDecoder()
    return ({6: "tcp", 17: "udp"}[row[0]], dec.addr(row[2])[1], _sport(row), dec.addr(row[3])[1], row[4])


def _sport(row):
    return row[7] if len(row) > 7 else None


@pytest.mark.parametrize("cmd", [["drops", "--duration", "1"], ["snapshot"]])
def test_non_root_is_one_line(cmd):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CTTRACE, *cmd],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "root" in r.stderr and "Traceback" not in r.stderr


def test_features_json():
    r = subprocess.run([CTTRACE, "features", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["checks"]["tracepoint_kfree_skb"]["ok"] is True
    assert d["backend"] == "tracepoint"
    for c in d["checks"].values():
        assert c["detail"]          # every answer says why


def test_interval_summaries_count_the_drops_shown(lab, tmp_path):
    """--summary: one record per interval with drops, counting by reason
    exactly the events shown in it, the top source first; the records'
    table-full sum equals the kernel's."""
    d = Drops(tmp_path, "--netns", lab.node, "--summary", "--every", "0.5")
    r = lab.table_full(lab.containers[0], k=150, admit=80)
    lab.udp_flows(lab.containers[1], 3)
    records, _ = d.stop()
    events = [e for e in records if "type" not in e]
    sums = [e for e in records if e.get("type") == "interval"]
    assert sums and all(s["drops"] == sum(s["by_reason"].values()) for s in sums)
    assert sum(s["by_reason"].get("table_full", 0) for s in sums) == \
        len([e for e in events if e["reason"] == "table_full"]) == r.kernel_drop > 0
    assert sum(s["drops"] for s in sums) == len(events)
    big = max(sums, key=lambda s: s["drops"])
    assert big["top_sources"][0]["src"] == lab.container_ip(lab.containers[0])
    assert big["top_sources"][0]["container"] == lab.containers[0]
    # an event line never carries "type"; a summary always follows the events it counts
    last_event = max(i for i, e in enumerate(records) if "type" not in e)
    assert records[-1].get("type") == "interval" and last_event < len(records) - 1
