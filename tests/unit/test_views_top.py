"""The `top` view rendered from hand-made frames (the shape of
tracer/core/frame.top_frame) through rich's recording console."""

import copy
import io

import pytest
from rich.console import Console

from tracer.views.top import main_table, render

BLIND = ("no kprobes/fentry on this kernel: inserts and deletes come from ctnetlink events; "
         "early drops and insert failures are counters only")
FRAME = {
    "ts": 1700000000.0, "netns": 4026532000, "netns_name": "ctlab-node", "backend": "tracepoint",
    "blind_spots": BLIND, "count": 1234, "max": 2000, "buckets": 1024, "tracked": 1234, "freshness": {},
    "interval": 1.0,
    "rates": {"inserts": 120.0, "deletes": 100.0, "drops": 3.0, "early_drops": 0.0, "insert_failed": 0.0,
              "invalid": 0.0},
    "group": "src", "sort": "entries", "paused": False,
    "top": [{"key": "198.18.1.11", "entries": 1000, "share": 0.81, "inserts_per_s": 100.0,
             "deletes_per_s": 90.0, "drops_per_s": 3.0, "container": "ctlab-c1", "drops_total": 9},
            {"key": "198.18.1.12", "entries": 234, "share": 0.19, "inserts_per_s": 0.5,
             "deletes_per_s": 0.0, "drops_per_s": 0.0, "container": None, "drops_total": 0}],
    "top_sources": [], "totals": {},
    "drops": [{"ts": 1700000000.5, "reason": "table_full", "proto": "udp", "src": "198.18.1.11",
               "sport": 1000, "dst": "198.19.0.2", "dport": 53, "container": "ctlab-c1"}],
    "lost": {"events": 0, "over_rate_limit": 0, "bpf_map_full": 0, "missed_probe_runs": None,
             "netlink_overruns": 0},
    "history": {"fill": [0.1, 0.5, 0.6], "drops": [0, 3, 1]},
}


pytestmark = pytest.mark.usefixtures("utc")      # tests/unit/conftest.py


def frame(**kw):
    f = copy.deepcopy(FRAME)
    f.update(kw)
    return f


def text_of(renderable, width=80, height=None) -> str:
    c = Console(record=True, width=width, height=height or 25, color_system=None, file=io.StringIO())
    c.print(renderable)
    return c.export_text()


def test_lines_view_exact_at_80_columns():
    out = text_of(render(frame(), full_screen=False))
    assert out.splitlines() == [
        "╭─ cttrace top — netns ctlab-node (4026532000) ────────────────────────────────╮",
        "│ table 1,234 / 2,000  ████████████░░░░░░░░  61.7%  buckets 1,024              │",
        "│ inserts/s 120   deletes/s 100   table-full drops/s 3.0   early drops/s 0     │",
        "│ insert failures/s 0                                                          │",
        "│ since start:  table-full drops 0  clash drops 0  rule drops 0  early drops 0 │",
        "│ lost events 0                                                                │",
        "│ fill  ▂▅▅                              drops ▁█▃                             │",
        "│ backend tracepoint (no kprobes/fentry on this kernel: inserts and deletes    │",
        "│ come from ctnetlink events; early drops and insert failures are counters     │",
        "│ only)                                                                        │",
        "╰──────────────────────────────────────────────────────────────────────────────╯",
        "by src (sorted by entries)                                                      ",
        "┏━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━┓",
        "┃ src          ┃ entries ┃ share ┃ inserts/s ┃ deletes/s ┃ drops/s ┃ container ┃",
        "┡━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━┩",
        "│ 198.18.1.11  │   1,000 │ 81.0% │       100 │        90 │     3.0 │ ctlab-c1  │",
        "│ 198.18.1.12  │     234 │ 19.0% │       0.5 │         0 │       0 │           │",
        "└──────────────┴─────────┴───────┴───────────┴───────────┴─────────┴───────────┘",
        "drops by reason:  none",
        "by container:  none",
        "latest drops                                                                    ",
        "┏━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━┓",
        "┃ time      ┃ reason      ┃ tuple                                  ┃ container ┃",
        "┡━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━┩",
        "│ 22:13:20  │ table_full  │ udp 198.18.1.11:1000 -> 198.19.0.2:53  │ ctlab-c1  │",
        "└───────────┴─────────────┴────────────────────────────────────────┴───────────┘",
    ]


@pytest.mark.parametrize("group", ["container", "dst", "port", "state"])
def test_one_group_column_and_no_empty_container_column(group):
    rows = [{"key": "ctlab-c1" if group == "container" else "x", "entries": 5, "share": 1.0,
             "inserts_per_s": None, "deletes_per_s": None, "drops_per_s": None, "container": None,
             "drops_total": None}]
    out = text_of(main_table(frame(group=group, top=rows)), width=100)
    head = out.splitlines()[2]
    cols = [c.strip() for c in head.strip("┃").split("┃")]
    if group == "container":       # groups of sources: both sides of DNATed entries
        assert cols == [group, "as src", "as dst", "share", "inserts/s", "deletes/s", "drops/s"]
    else:
        assert cols == [group, "entries", "share", "inserts/s", "deletes/s", "drops/s"]


def test_group_src_keeps_its_container_column():
    head = text_of(main_table(frame()), width=100).splitlines()[2]
    assert [c.strip() for c in head.strip("┃").split("┃")][-1] == "container"


def _header_lines(out: str) -> list[str]:
    """The header panel's inner lines of a full-screen frame."""
    lines = out.splitlines()
    end = next(i for i, l in enumerate(lines) if l.startswith("╰"))
    return [l.strip("│ ").rstrip() for l in lines[1:end]]


@pytest.mark.parametrize("width", [80, 110, 200])
def test_full_screen_header_is_never_cut(width):
    f = frame(lost={"events": 12345, "over_rate_limit": 7, "bpf_map_full": 0, "missed_probe_runs": None,
                    "netlink_overruns": 3})
    out = text_of(render(f), width=width, height=24)
    lines = out.splitlines()
    assert len(lines) == 24 and all(len(l) == width for l in lines)
    head = _header_lines(out)
    joined = " ".join(head)
    assert f"backend tracepoint ({BLIND})" in joined                 # the whole sentence
    for item in ("table 1,234 / 2,000", "buckets 1,024", "inserts/s 120", "deletes/s 100",
                 "table-full drops/s 3.0", "early drops/s 0", "insert failures/s 0",
                 "lost events 12345", "netlink overruns 3", "over rate limit 7"):
        assert any(item in l for l in head), (item, head)           # never split inside an item
    assert "by src (sorted by entries)" in out and "latest drops" in out
    assert lines[-1].startswith("q quit  g group  s sort  p pause  h help")
    if width == 200:     # one line each at full width; the history is drawn below the tables
        assert len(head) == 4 and head[2].startswith("since start:")


def test_classic_80x24_terminal_still_shows_a_drop_row():
    out = text_of(render(frame()), width=80, height=24).splitlines()
    assert len(out) == 24
    assert any(l.startswith("198.18.1.11 ") and " 1,000 " in l for l in out)
    assert any("table_full" in l and "198.19.0.2:53" in l for l in out)


def test_help_footer_wraps_instead_of_being_cut():
    out = text_of(render(frame(), show_help=True), width=80, height=30)
    tail = " ".join(l.strip() for l in out.splitlines()[-2:])
    assert tail.endswith("p: pause (the counts go on)   q: quit")


HOSTILE = "[/x][bold red]x\x1b[2J\x1b]0;title\x07"


@pytest.mark.parametrize("full_screen", [True, False])
@pytest.mark.parametrize("group", ["src", "container"])
def test_names_from_the_system_render_literally(full_screen, group):
    f = frame(netns_name="[/netns]", group=group, paused=True,
              top=[{**FRAME["top"][0], "key": "[/x]" if group == "container" else "198.18.1.11",
                    "container": HOSTILE}],
              drops=[{**FRAME["drops"][0], "container": "[bold red]c1", "reason": "[/r]"}])
    out = text_of(render(f, full_screen=full_screen), width=120, height=40)
    assert "\x1b" not in out and "\x07" not in out
    assert "cttrace top — netns [/netns] (4026532000)  [PAUSED]" in out
    assert "[bold red]c1" in out and "[/r]" in out
    if group == "container":
        assert ("\n[/x] " if full_screen else "│ [/x] ") in out
    else:
        assert "[/x][bold red]x\\x1b[2J\\x1b]0;title\\x07" in out


BURST = dict(totals={"table_full": 120, "insert_failed": 4, "rule": 3, "early_drops": 2, "inserts": 500,
                     "deletes": 10, "lost_events": 0},
             drops_by_reason={"table_full": 120, "insert_failed": 4, "rule": 3},
             drops_by_container=[{"name": "ctlab-c1", "drops": 120, "sources": 1},
                                 {"name": "198.18.1.12", "drops": 7, "sources": 1}],
             rates={**FRAME["rates"], "drops": 0.0},         # the burst is over
             drops=FRAME["drops"] * 8,
             top=[{**FRAME["top"][0], "key": f"198.18.1.{i}", "entries": 100 - i} for i in range(10, 22)])


def test_totals_since_start_stay_after_a_burst():
    out = text_of(render(frame(**BURST)), width=80, height=24)
    head = " ".join(_header_lines(out))
    assert "table-full drops/s 0 " in head                       # now: over
    for item in ("table-full drops 120", "clash drops 4", "rule drops 3", "early drops 2", "lost events 0"):
        assert item in head, item                                # since the start: kept
    lines = out.splitlines()
    assert any(l.startswith("drops by reason:  table_full 120  insert_failed 4  rule 3") for l in lines)
    assert any(l.startswith("by container:  ctlab-c1 120  198.18.1.12 7") for l in lines)


@pytest.mark.parametrize("width,height", [(80, 24), (200, 50), (100, 40)])
def test_full_screen_has_no_gap_and_no_cut(width, height):
    """Every line of the terminal used: the sections follow each other with
    no blank line between them, the blank lines (if any) only above the
    footer, the footer on the last line; a wide screen puts the drops
    beside the main table and uses its columns."""
    out = text_of(render(frame(**BURST)), width=width, height=height).splitlines()
    assert len(out) == height and all(len(l) == width for l in out)
    assert out[-1].startswith("q quit")
    body = out[:-1]
    blank = [i for i, l in enumerate(body) if not l.strip()]
    assert blank == list(range(len(body) - len(blank), len(body)))        # only at the end
    assert len(blank) <= max(2, height // 5)
    rows = [l for l in out if l.startswith("198.18.1.")]
    drops = [l for l in out if "table_full" in l and "198.19.0.2:53" in l]
    assert rows and drops
    if width >= 150:
        # side by side: main table rows and drop rows on the same lines, both sides filled
        assert any("198.18.1." in l[:100] and "198.19.0.2:53" in l[100:] for l in out)
        assert all(len(l.rstrip()) >= width - 12 for l in out if "198.19.0.2:53" in l)
        assert len(rows) == 12 and len(drops) == 8                         # everything fits
    else:
        assert max(out.index(l) for l in rows) < min(out.index(l) for l in drops)
    if (width, height) == (80, 24):
        assert len(rows) >= 2 and len(drops) >= 2
        assert any("more below" in l for l in out)              # rows left out are said
