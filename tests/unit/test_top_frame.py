"""`top`'s view fed by a real TracingSession.frame() (not a hand-made
frame): a fake backend's exact counts, a live table feed over a fake dump,
two samples of the kernel's per-CPU counters, then the rendered screen."""

import io
import socket

import pytest
from rich.console import Console

from tracer.core.events import Counters, Drop, SourceCounts
from tracer.kernel.stats import TableState
from tracer.live.session import TracingSession
from tracer.views.top import render

pytestmark = pytest.mark.usefixtures("utc")


def rows(n, src):
    s = socket.inet_aton(src)
    return [(17, None, s, socket.inet_aton("198.18.1.1"), 53, 0, (0, 0), 1000 + i, None, 30)
            for i in range(n)]


def test_frame_from_a_session_renders_in_top(make_session, fake_backend, live_feed, monkeypatch):
    counts = Counters(backend="fake", sources=[SourceCounts(7, "198.18.0.1", table_full=4)])
    drop = Drop(ts=1700000000.0, netns=7, cpu=0, family="ipv4", proto="udp", src="198.18.0.1",
                sport=1000, dst="198.18.1.1", dport=53, reason="table_full", ct_attached=False)
    be = fake_backend([[drop]], counters=counts)
    feed, clock, _ = live_feed(0, rows(30, "198.18.0.1") + rows(10, "198.18.0.2"))
    before = [{"cpu": 0, "drop": 10, "insert_failed": 1}, {"cpu": 1, "drop": 5}]
    readings = iter([                                # at open(), then two samples a second apart
        TableState(count=40, max=100, buckets=64, cpu=before),
        TableState(count=40, max=100, buckets=64, cpu=before),
        TableState(count=40, max=100, buckets=64, cpu=[{"cpu": 0, "drop": 13, "insert_failed": 2},
                                                       {"cpu": 1, "drop": 7}]),
    ])
    now = [100.0]
    monkeypatch.setattr("tracer.live.session.time.monotonic", lambda: now[0])
    monkeypatch.setattr(TracingSession, "read_table", lambda self: next(readings))
    with make_session(be, only_followed_netns=True) as s:
        s.feed, s.inum = feed, 7
        s.pump()
        s.sample()
        now[0] += 1.0
        s.sample()
        f = s.frame("src", "entries", 10)
    assert f["count"] == 40 and f["tracked"] == 40
    # table-full: drop +3 +2, less the one clash (insert_failed +1) = 4 per second
    assert f["rates"]["drops"] == f["rates"]["table_full"] == 4.0
    assert f["totals"]["table_full"] == 4 and f["totals"]["insert_failed"] == 1
    assert [x["key"] for x in f["top"]] == ["198.18.0.1", "198.18.0.2"]
    c = Console(record=True, width=80, height=25, color_system=None, file=io.StringIO())
    c.print(render(f, full_screen=False))
    out = c.export_text()
    assert "table 40 / 100" in out and "198.18.0.1" in out and "198.18.0.2" in out
    assert "table-full drops/s 4" in out
    assert "198.18.1.1" in out                       # the recent drop's destination
