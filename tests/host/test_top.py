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
@pytest.mark.parametrize("width,height", [(80, 24), (200, 50)])
def test_full_screen_view_in_tmux(lab, tmp_path, width, height):
    """The real full-screen view in a terminal of that size, with the lab's
    traffic and a table-full burst: the totals since the start equal the
    kernel's and stay once the burst is over, the drops by reason and by
    container, no blank line between sections, no line cut. The captures
    are kept as artefacts of the run ($CTTRACE_ARTIFACTS)."""
    from tests.chromium import artifacts
    ready = tmp_path / "ready"
    session = f"cttop{os.getpid()}x{width}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height),
                    # the terminal's own size: pytest leaves COLUMNS/LINES for its children
                    f"env -u COLUMNS -u LINES {CTTRACE} top --netns {lab.node} --interval 0.5 "
                    f"--ready-file {ready}"], check=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, _pane(session)
            time.sleep(0.1)
        before = lab.node_stats()
        lab.tcp_established(lab.containers[1], 20)
        r = lab.table_full(lab.containers[0], k=120, admit=60)
        after = lab.node_stats()
        full = (after["drop"] - before["drop"]) - (after["insert_failed"] - before["insert_failed"])
        assert full == r.kernel_drop > 0
        want = f"table-full drops {full:,}"
        deadline = time.monotonic() + 15           # a loaded machine redraws late
        screen = _pane(session)
        while not (want in screen and "table-full drops/s 0 " in screen) and time.monotonic() < deadline:
            time.sleep(0.25)
            screen = _pane(session)
        (artifacts() / f"top-{width}x{height}.txt").write_text(screen)
        lines = screen.split("\n")[:height]
        assert len(lines) == height and all(len(l) <= width for l in lines)
        head = " ".join(lines[:next(i for i, l in enumerate(lines) if l.startswith("╰"))])
        assert "table " in head and ("█" in head or "░" in head)      # the fill gauge
        assert want in head and "table-full drops/s 0 " in head, head  # the burst is over, its total stays
        assert "lost events 0" in head
        assert "by src" in screen
        top_line = next(l for l in lines if l.startswith("198.18.1."))
        assert top_line.startswith(lab.container_ip(lab.containers[0]))     # the biggest source first
        assert any("table_full" in l and "198.19.0.2:53" in l for l in lines)   # a drop line
        assert f"drops by reason:  table_full {r.kernel_drop:,}" in screen
        by = next(l for l in lines if "by container:" in l)
        assert f"{lab.containers[0]} {r.kernel_drop:,}" in by or \
            f"{lab.container_ip(lab.containers[0])} {r.kernel_drop:,}" in by, by
        # no blank line between sections: blank lines only above the footer
        body = lines[:-1]
        blank = [i for i, l in enumerate(body) if not l.strip()]
        assert blank == list(range(len(body) - len(blank), len(body))), screen
        assert lines[-1].startswith("q quit")
        if width >= 150:                           # the drops beside the main table
            assert any(l.startswith("by src") and "drops by reason:" in l[width // 2:] for l in lines)
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
