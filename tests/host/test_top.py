"""`cttrace top` against the lab: live entries per container equal the
kernel's table, insert rates match the generators, drops equal the
kernel's delta; and the real full-screen view, driven in tmux."""

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE, lab_fixture

PREFIX = "ctlabtop-"


pytestmark = pytest.mark.usefixtures("needs_tracepoint")
lab = lab_fixture(PREFIX, containers=2)


def start_top(tmp: Path, *args):
    ready = tmp / "ready"
    out = open(tmp / "out", "w+")
    err = open(tmp / "err", "w+")
    p = subprocess.Popen([CTTRACE, "top", "--json", "--ready-file", str(ready), *args],
                         stdout=out, stderr=err)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            err.seek(0)
            raise AssertionError(f"cttrace top did not start: {err.read()}")
        time.sleep(0.05)
    return p, out


def frames(p, out, settle=2.5):
    time.sleep(settle)
    p.send_signal(signal.SIGINT)
    p.wait(30)
    out.seek(0)
    return [json.loads(l) for l in out if l.strip()]


def test_entries_rates_and_containers(lab, tmp_path):
    c1, c2 = lab.containers
    p, out = start_top(tmp_path, "--netns", lab.node, "--interval", "1")
    t0 = time.time()
    r1 = lab.udp_flows(c1, 500, rate=100)                 # 5 s at 100 new flows/s
    t1 = time.time()
    r2 = lab.tcp_established(c2, 30)
    fs = frames(p, out)
    assert not r1.failed and not r2.failed
    kernel = Counter(f.src for f, _ in lab.node_entries())
    last = {s["src"]: s for s in fs[-1]["top_sources"]}
    for c in (c1, c2):
        ip = lab.container_ip(c)
        assert last[ip]["entries"] == kernel[ip]
        assert last[ip]["container"] == c                  # named after its namespace
    assert fs[-1]["count"] == sum(kernel.values())
    inside = [f for f in fs if f["ts"] - f["interval"] >= t0 + 0.2 and f["ts"] <= t1 - 0.2]
    assert inside, "no whole interval inside the generator's run"
    ip1 = lab.container_ip(c1)
    for f in inside:
        got = {s["src"]: s for s in f["top_sources"]}[ip1]["inserts_per_s"]
        assert abs(got - r1.rate) <= 0.1 * r1.rate, (got, r1.rate)


def test_table_full_drops_equal_the_kernel(lab, tmp_path):
    c1 = lab.containers[0]
    p, out = start_top(tmp_path, "--netns", lab.node, "--interval", "0.5")
    r = lab.table_full(c1, k=200, admit=80)
    fs = frames(p, out, settle=1.5)
    assert fs[-1]["totals"]["table_full"] == r.kernel_drop == len(r.dropped)
    src = {s["src"]: s for s in fs[-1]["top_sources"]}[lab.container_ip(c1)]
    assert src["drops_total"] == len(r.dropped)
    shown = {(d["src"], d["sport"]) for f in fs for d in f["drops"]}
    assert shown <= {(f.src, f.sport) for f in r.dropped} and shown


@pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux")
def test_full_screen_view_in_tmux(lab, tmp_path):
    ready = tmp_path / "ready"
    session = f"cttop{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "48",
                    f"{CTTRACE} top --netns {lab.node} --interval 0.5 --ready-file {ready}"], check=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, _pane(session)
            time.sleep(0.1)
        lab.tcp_established(lab.containers[1], 20)
        lab.table_full(lab.containers[0], k=120, admit=60)
        deadline = time.monotonic() + 15           # a loaded machine redraws late
        screen = _pane(session)
        while "table_full" not in screen and time.monotonic() < deadline:
            time.sleep(0.25)
            screen = _pane(session)
        assert "table " in screen and "█" in screen or "░" in screen      # the fill gauge
        assert "by src" in screen
        top_line = next(l for l in screen.splitlines() if "198.18.1." in l)
        assert lab.container_ip(lab.containers[0]) in top_line         # the biggest source first
        assert "table_full" in screen and "198.19.0.2:53" in screen    # a drop line
        subprocess.run(["tmux", "send-keys", "-t", session, "g"], check=True)
        time.sleep(1.0)
        assert "by dst" in _pane(session)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        for _ in range(50):
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("q did not quit")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True).stdout
