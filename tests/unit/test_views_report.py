"""`cttrace report`'s renderings (terminal through rich's recording
console, HTML) from captures made in the test, hostile ones included:
a capture comes from another host, every string in it is foreign."""

import html
import re
import io
import json

import pytest
from tests.clirunner import runner
from rich.console import Console

from tests.unit.test_capture_report import make_capture
from tracer.formats.capture import Writer, read_capture
from tracer.cli import main
from tracer.core.report import analyse
from tracer.views.report import render, to_html

HOSTILE = "[/x][bold red]\x1b[2J<script>alert(1)</script>"


pytestmark = pytest.mark.usefixtures("utc")      # tests/unit/conftest.py


def text_of(renderable, width=80) -> str:
    c = Console(record=True, width=width, color_system=None, file=io.StringIO())
    c.print(renderable)
    return c.export_text()


def test_render_exact_head(tmp_path):
    rep = analyse(read_capture(str(make_capture(tmp_path / "c"))))
    lines = text_of(render(rep), width=100).splitlines()
    assert [l.rstrip(" │") for l in lines[:13]] == [
        "╭─ cttrace report ─────────────────────────────────────────────────────────────────────────────────╮",
        "│ h · kernel k · backend tracepoint · netns node",
        "│ 1970-01-01 00:16:40, 5 s, 31 records",
        "│ 50 table-full drops from 10.0.0.2 between 00:16:40 and 00:16:45, table at its limit of 100.",
        "│ 5 entries were evicted to make room (early drop).",
        "│ Most new entries came from web-1 (10.0.0.1): 18 of 18.",
        "│ Findings: 2 critical, 2 warning.",
        "│ inserts 18  deletes 0  table-full drops 50  early drops 5  insert failures 0  lost 0",
        "│ forecast: unknown (no remaining timeouts recorded)",
        "│ fill   ▇▇▇███",
        "│ drops  █████▁",
        "│ insert ██████",
        "╰──────────────────────────────────────────────────────────────────────────────────────────────────╯",
    ]
    out = "\n".join(lines)
    assert "│ 10.0.0.1 │      18 │ web-1     │" in out
    assert "│ 10.0.0.2 │    50 │           │" in out
    assert "critical: table_full" in out


def _hostile_capture(path):
    state = {"netns": HOSTILE, "count": 95, "max": 100, "by_src": {"198.18.1.11": 95},
             "containers": {"198.18.1.11": HOSTILE}}
    w = Writer(str(path), {"host": HOSTILE, "kernel": "[/k]", "backend": "[b]", "netns": HOSTILE,
                           "interval": 1.0, "state": state})
    for i in range(3):
        w.write({"k": "stats", "t": 1000.0 + i, "count": 95, "max": 100, "kernel": {"drop": 4 * i}})
        w.write({"k": "insert", "t": 1000.1 + i, "proto": "udp", "src": "[/src]", "sport": 1, "dst": "d",
                 "dport": 53, "container": HOSTILE})
        w.write({"k": "drop", "t": 1000.2 + i, "reason": "table_full", "proto": "udp", "src": "198.18.1.11",
                 "sport": 1, "dst": "d", "dport": 53, "container": HOSTILE})
    w.write({"k": "end", "t": 1002.0, "sources": {"198.18.1.11": 8}, "state": state})
    w.close()
    return path


def test_hostile_capture_renders_literally(tmp_path):
    rep = analyse(read_capture(str(_hostile_capture(tmp_path / "c"))))
    out = text_of(render(rep), width=200)
    assert "\x1b" not in out
    assert "[/x][bold red]\\x1b[2J<script>alert(1)</script> · kernel [/k] · backend [b]" in out
    assert "[/src]" in out
    page = to_html(rep)
    assert "<script>" not in page and "\x1b" not in page
    assert html.escape("[/x][bold red]") in page


def test_hostile_capture_through_the_cli(tmp_path):
    p = _hostile_capture(tmp_path / "c")
    for args in (["report", str(p)], ["doctor", "--capture", str(p)]):
        r = runner().invoke(main, args)
        assert r.exit_code == 0 and r.exception is None, (args, r.output, r.exception)
        assert "[/x][bold red]" in r.stdout and "\x1b" not in r.stdout


def test_html_exact_totals(tmp_path):
    rep = analyse(read_capture(str(make_capture(tmp_path / "c"))))
    page = to_html(rep)
    cards = dict((k, v) for v, k in re.findall(r"<div[^>]*><b>([^<]*)</b><span>([^<]*)</span></div>", page))
    assert cards == {"table-full drops": "50", "clash drops": "0", "early drops": "5", "inserts": "18",
                     "deletes": "0", "peak fill": "95%", "lost events": "0"}
    assert page.count("<svg") == 3           # fill, drops, inserts: no entries records in this capture
    assert '<tr><td>10.0.0.2</td><td class="n">50</td><td></td></tr>' in page
    assert json.loads(json.dumps(rep)) == rep


def test_drops_interval_line():
    from tracer.core.events import Drop
    from tracer.views.drops import interval_line, interval_record
    mk = lambda src, reason, c: Drop(ts=0.0, netns=1, cpu=0, family="ipv4", proto="udp", src=src,  # noqa: E731
                                      sport=1, dst="10.9.9.9", dport=53, reason=reason, ct_attached=False,
                                      container=c)
    ds = [mk("198.18.1.11", "table_full", "c1")] * 118 + [mk("198.18.1.12", "rule", "[red]c2\x1b")] * 3
    r = interval_record(3600 * 3 + 21 * 60 + 41, 1.0, ds)
    assert r["by_reason"] == {"table_full": 118, "rule": 3} and r["drops"] == 121
    assert r["top_sources"][0] == {"container": "c1", "src": "198.18.1.11", "drops": 118}
    assert interval_line(r) == "-- 03:21:41 1s: 118 table_full, 3 rule; most from c1 198.18.1.11 (118)"
    assert "\x1b" not in interval_line({**r, "top_sources": r["top_sources"][::-1]})


def test_destination_side_of_drops_in_lines_intervals_and_report(tmp_path):
    """A drop sent to a published port names its destination side apart
    from its source: the drops line, the interval record, the report."""
    from tracer.core.events import Drop
    from tracer.core.report import analyse
    from tracer.views.drops import interval_line, interval_record, line
    from tracer.views.report import render, to_html
    d = Drop(ts=0.0, netns=1, cpu=0, family="ipv4", proto="udp", src="198.19.255.2", sport=5, dst="198.19.255.1",
             dport=18080, reason="table_full", ct_attached=False, container="client", dst_container="d-pub\x1b")
    assert line(d).endswith("table_full  to d-pub\\x1b") and d.to_dict()["dst_container"] == "d-pub\x1b"
    r = interval_record(0.0, 1.0, [d] * 4 + [Drop(**{**d.__dict__, "dst_container": None})])
    assert r["top_destinations"] == [{"container": "d-pub\x1b", "drops": 4}]
    assert r["top_sources"] == [{"container": "client", "src": "198.19.255.2", "drops": 5}]
    assert "; most to d-pub" in interval_line(r) and "\x1b" not in interval_line(r)
    assert "top_destinations" not in interval_record(0.0, 1.0, [Drop(**{**d.__dict__, "dst_container": None})])
    p = make_capture(tmp_path / "c")
    w = Writer(str(tmp_path / "d"), {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node",
                                     "interval": 1.0, "state": {}})
    for i in range(3):
        w.write({"k": "drop", "t": 1000.0 + i, **d.to_dict(), "dst_container": "d-pub"})
    w.write({"k": "drop", "t": 1003.0, **d.to_dict(), "dst_container": None, "reason": "insert_failed"})
    w.close()
    rep = analyse(read_capture(str(tmp_path / "d")))
    assert rep["drops_by_destination"] == [{"container": "d-pub", "drops": 3, "ports": ["udp/18080"],
                                            "events_by_reason": {"table_full": 3}}]
    assert [r["name"] for r in rep["drops_by_container"]] == ["client"]     # never mixed with the sources
    assert "Drops by destination" in to_html(rep) and '<td>udp/18080</td>' in to_html(rep)
    assert analyse(read_capture(str(p)))["drops_by_destination"] == []
    console = Console(record=True, width=100)
    console.print(render(rep))
    assert "drops by destination" in console.export_text()
