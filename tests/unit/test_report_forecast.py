"""`report` (and `doctor --capture`): time to full from a capture's
recorded state and rates, against a fill curve the test knows exactly.

The captured table at its end: 1,000 UDP entries with 50 s left and 200
with 95 s left (udp_timeout 100: those are 5 s idle, the kind new entries
take); 40 new entries a second over 20 s (800 insert events; the kernel's
insert counter stays 0, as on recent kernels). Nothing refreshed, so the
count is 1,200 + 40 s until the first 1,000 leave at s = 50: with a limit of
2,000 the table is full at s = 20; the rate band is 40 +- 2 sqrt(800)/20.
"""

import io
import json
import math

from tests.clirunner import runner
from rich.console import Console

from tracer.core import forecast as fc
from tracer.formats.capture import Writer, read_capture
from tracer.cli import main
from tracer.core.report import analyse, capture_state
from tracer.views.report import render, to_html

T, RATE, SECONDS = 100, 40, 20


def ages():
    return fc.summarize({"udp/UNREPLIED": {50: 1000, 95: 200}}, {"udp_timeout": T})


def capture(path, limit, end=True):
    state = {"netns": "node", "count": 1200, "max": limit, "total": 1200, "sysctls": {"udp_timeout": T},
             "by_src": {"198.18.0.9": 1200}, "ages": ages()}
    w = Writer(str(path), {"host": "h", "kernel": "6.18", "backend": "tracepoint", "netns": "node",
                           "interval": 1.0, "state": state})
    t0 = 1000.0
    for i in range(SECONDS + 1):
        # with an end record the state is the end's (the table held 1,200 then);
        # cut short, the start's: its 1,200 entries and the inserts since, none expired
        w.write({"k": "stats", "t": t0 + i, "count": 1200 if end else 1200 + RATE * i, "max": limit,
                 "kernel": {"insert": 0, "drop": 0}})
        if i < SECONDS:
            for j in range(RATE):
                w.write({"k": "insert", "t": t0 + i + j / RATE, "proto": "udp", "src": "198.18.0.10",
                         "sport": 20000 + i * RATE + j, "dst": "198.18.1.1", "dport": 6000})
    if end:
        w.write({"k": "end", "t": t0 + SECONDS, "totals": {}, "sources": {}, "state": state})
    w.close()
    return path


def test_time_to_full_equals_the_known_curve(tmp_path):
    rep = analyse(read_capture(str(capture(tmp_path / "c", 2000))))
    f = rep["forecast"]
    assert f["filling"] is True and math.isclose(f["seconds"], 20.0)
    d = 2 * math.sqrt(800) / SECONDS
    assert math.isclose(f["rate"], 40.0) and math.isclose(f["rate_low"], 40 - d)
    assert math.isclose(f["low"], 800 / (40 + d)) and math.isclose(f["high"], 800 / (40 - d))
    assert f["life"] == T and f["inserts"] == 800 and f["text"] == "full in ~20s (19s-22s)"
    # the doctor's finding on the same capture says the same
    tf = next(x for x in rep["findings"] if x["id"] == "time_to_full")
    assert "full in ~20s (19s-22s)" in tf["message"] and "new entries +800 in 20.0 s" in tf["evidence"]
    # terminal and HTML
    c = Console(record=True, width=100, color_system=None, file=io.StringIO())
    c.print(render(rep))
    out = c.export_text()
    assert "forecast: full in ~20s (19s-22s) at 40.0 new entries/s (band 37.2-42.8/s over 20 s)" in out
    page = to_html(rep)
    assert "<h2>Forecast</h2><p>full in ~20s (19s-22s) at 40.0 new entries/s" in page
    assert json.loads(json.dumps(rep)) == rep


def test_not_filling_and_its_level(tmp_path):
    rep = analyse(read_capture(str(capture(tmp_path / "c", 10000))))
    f = rep["forecast"]
    assert f["filling"] is False and f["steady"] == RATE * T
    assert f["text"].startswith("not filling (levels at ~4,000)")


def test_cut_short_capture_ages_from_its_start(tmp_path):
    """No end record: the state (and its remaining timeouts) is the start's,
    20 s older than the capture's end. At the end 1,000 entries have 30 s
    left, 200 have 75 s, and the 800 inserted during the capture 80-100 s:
    2,000 + 40 s, so a limit of 2,600 is reached at s = 15 and 2,000 now."""
    cap = read_capture(str(capture(tmp_path / "c", 2600, end=False)))
    h = capture_state(cap)
    assert h.dump_lag == SECONDS and h.inserts_seen == 800 and h.count == 2000
    f = analyse(cap)["forecast"]
    assert math.isclose(f["seconds"], 15.0)
    rep = analyse(read_capture(str(capture(tmp_path / "d", 2000, end=False))))
    assert rep["forecast"]["seconds"] == 0.0


def test_unknown_without_ages_and_doctor_capture(tmp_path):
    from tests.unit.test_capture_report import make_capture
    rep = analyse(read_capture(str(make_capture(tmp_path / "old"))))
    assert rep["forecast"] == {"filling": None, "reason": "no remaining timeouts recorded",
                               "text": "unknown (no remaining timeouts recorded)"}
    r = runner().invoke(main, ["doctor", "--capture", str(capture(tmp_path / "c", 2000)), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert any(x["id"] == "time_to_full" and "full in ~20s" in x["message"] for x in out["findings"])
