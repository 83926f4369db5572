"""doctor, capture and report against the lab and the kernel."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE, start_capture
from tracer.kernel.features import check_tracepoint, mount_tracefs

PREFIX = "ctlabdoc-"


@pytest.fixture
def lab():
    L.lab_down(PREFIX)
    with L.Lab(containers=2, vxlan=True, prefix=PREFIX) as lab:
        yield lab


def doctor(*args):
    r = subprocess.run([CTTRACE, "doctor", "--json", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["findings"]


def test_tracked_vxlan_is_found_and_fixed(lab):
    lab.vxlan_traffic(5)
    found = {f["id"]: f for f in doctor("--netns", lab.node)}
    assert "tracked_vxlan" in found
    fix = found["tracked_vxlan"]["fix"]
    for line in fix.splitlines():
        if line.strip() and not line.startswith("#"):
            subprocess.run(["ip", "netns", "exec", lab.node, "sh", "-c", line], check=True,
                           capture_output=True)
    assert "tracked_vxlan" not in {f["id"] for f in doctor("--netns", lab.node)}
    lab.vxlan_traffic(5)                              # the tunnel again, after the fix
    time.sleep(0.3)
    tunnel = [f for f, _ in lab.node_entries() if f.dport == L.VXLAN_PORT]
    assert tunnel == []
    inner = [f for f, _ in lab.node_entries() if f.src == L.OVERLAY[1]]
    assert inner                                      # the inner flows are still tracked


def test_full_table_drops_and_top_container(lab):
    c1 = lab.containers[0]
    old = Path(L.CT_MAX).read_text().strip()
    lab.save_sysctl(L.CT_MAX, old)
    try:
        Path(L.CT_MAX).write_text(str(lab.node_count() + 120))
        r = lab.udp_flows(c1, 200, timeout=0.2)
        assert r.failed
        stop = threading.Event()

        def keep_dropping():                          # drops while doctor watches
            while not stop.is_set():
                lab.udp_flows(c1, 5, timeout=0.05)
        t = threading.Thread(target=keep_dropping)
        t.start()
        try:
            found = {f["id"]: f for f in doctor("--netns", lab.node, "--window", "1")}
        finally:
            stop.set()
            t.join()
    finally:
        Path(L.CT_MAX).write_text(old)
        lab.forget_sysctl(L.CT_MAX)
    assert found["table_full"]["severity"] == "critical"
    assert "dropping_now" in found or "dropped_before" in found
    assert c1 in found["heavy_source"]["message"]


def test_capture_then_report_totals_equal_the_kernel(lab, tmp_path):
    mount_tracefs()
    if not check_tracepoint().ok:
        pytest.skip("needs tracepoint skb:kfree_skb with drop reasons")
    out = tmp_path / "c.ctcap"
    ready = tmp_path / "ready"
    before = lab.node_stats()
    p = start_capture(lab.node, out, 10, ready)
    udp = lab.udp_flows(lab.containers[1], 60)
    r = lab.table_full(lab.containers[0], k=200, admit=80)
    p.wait(60)
    after = lab.node_stats()
    assert p.returncode == 0, p.stderr.read()
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    rep = subprocess.run([CTTRACE, "report", "--json", str(out)], capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    t = json.loads(rep.stdout)["totals"]
    assert t["drops"] == after["drop"] - before["drop"] == r.kernel_drop > 0
    assert t["inserts"] == len(udp.flows) + len(r.admitted)
    assert t["early_drops"] == after["early_drop"] - before["early_drop"]
    d = json.loads(rep.stdout)
    assert d["top_sources_by_drops"][0]["src"] == lab.container_ip(lab.containers[0])
    assert d["top_sources_by_drops"][0]["drops"] == len(r.dropped)
