"""`top`'s view fed by the frame a real TracingSession hands over
(top_frame(session.live_state()), not a hand-made frame): a fake backend's exact counts, a live table feed over a fake dump,
two samples of the kernel's per-CPU counters, then the rendered screen."""

import io

import pytest
from rich.console import Console

from tracer.views.top import render

pytestmark = pytest.mark.usefixtures("utc")


def test_frame_from_a_session_renders_in_top(session_frame):
    f = session_frame()
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
