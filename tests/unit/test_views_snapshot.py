"""The snapshot view rendered from a real report (the CLI's --json of a
known table file) and from hand-made ones with hostile names."""

import io
import json
from pathlib import Path

from tests.clirunner import runner
from rich.console import Console

from tracer.cli import main
from tracer.views.snapshot import render

DATA = Path(__file__).parent.parent / "data"


def text_of(renderable, width=80) -> str:
    c = Console(record=True, width=width, color_system=None, file=io.StringIO())
    c.print(renderable)
    return c.export_text()


def known_report() -> dict:
    r = runner().invoke(main, ["snapshot", "--file", str(DATA / "known-plain.proc"), "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_known_table_exact():
    rep = known_report()
    rep["source"] = "known-plain.proc"
    lines = text_of(render(rep)).splitlines()
    assert lines[:4] == [
        "╭─ cttrace snapshot ───────────────────────────────────────────────────────────╮",
        "│ source: known-plain.proc                                                     │",
        "│ entries: 13                                                                  │",
        "╰──────────────────────────────────────────────────────────────────────────────╯",
    ]
    body = [l.rstrip() for l in lines[4:]]
    assert body[0].split() == ["Original", "source", "Original", "Destination", "port"]
    # each table's rows: key, count, share of 13 entries
    assert "127.0.0.5  5  38.5" in body[1] and "tcp/8080  3  23.1" in body[1]
    assert any("ESTABLISHED  2  15.4" in l for l in body)
    assert any("UNREPLIED  7  53.8" in l for l in body)
    assert any(l.startswith("ipv4  10  76.9") for l in body)


def test_table_header_with_fill_and_counters():
    rep = {"source": "netlink", "netns": "ctlab-node", "total": 50, "entries_read": 80, "filters": "proto udp",
           "malformed": 0, "table": {"count": 80, "max": 100, "buckets": 64, "stats_source": "ctnetlink",
                                     "stats": {"drop": 3, "early_drop": 0, "insert_failed": 1}},
           "by_src": {"198.18.1.11": 50}, "containers": {"198.18.1.11": "web-1"}}
    out = text_of(render(rep), width=100).splitlines()
    assert out[1].rstrip(" │") == "│ source: netlink   netns: ctlab-node"
    assert out[2].rstrip(" │") == "│ entries: 50 matching proto udp of 80 read"
    assert out[3].rstrip(" │") == ("│ table: 80 / 100 ████████████████████████░░░░░░ 80.0%   buckets: 64")
    assert out[4].rstrip(" │") == "│ kernel counters (ctnetlink): drop=3 early_drop=0 insert_failed=1"
    assert "198.18.1.11 (web-1)  50  100.0" in out[7]


def test_no_entries():
    out = text_of(render({"source": "x", "total": 0, "filters": "port 1", "entries_read": 5}))
    assert out.splitlines()[-1].rstrip() == "no entries match the filters"


def test_hostile_names_render_literally():
    rep = {"source": "/tmp/[/x].txt", "netns": "[bold red]ns\x1b[2J", "total": 3, "entries_read": 3,
           "by_src": {"198.18.1.11": 2, "[/y]": 1}, "containers": {"198.18.1.11": "[/c]\x1b]0;t\x07"},
           "by_proto_state": {"udp/[/s]": 3}}
    out = text_of(render(rep), width=120)
    assert "\x1b" not in out and "\x07" not in out
    assert "source: /tmp/[/x].txt   netns: [bold red]ns\\x1b[2J" in out
    assert "198.18.1.11 ([/c]\\x1b]0;t\\x07)" in out and "[/y]" in out and "udp/[/s]" in out
