"""The `top` view rendered from hand-made frames (the shape of
TracingSession.frame) through rich's recording console."""

import copy
import io
import time

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


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


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
        "│ table 1,234 / 2,000  ███████████████████░░░░░░░░░░░  61.7%  buckets 1,024    │",
        "│ inserts/s 120   deletes/s 100   table-full drops/s 3.0   early drops/s 0     │",
        "│ insert failures/s 0                                                          │",
        "│ fill  ▂▅▅                              drops ▁█▃                             │",
        "│ backend tracepoint (no kprobes/fentry on this kernel: inserts and deletes    │",
        "│ come from ctnetlink events; early drops and insert failures are counters     │",
        "│ only)                                                                        │",
        "│ lost events 0, netlink overruns 0, over rate limit 0                         │",
        "╰──────────────────────────────────────────────────────────────────────────────╯",
        "by src (sorted by entries)                                                      ",
        "┏━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━┓",
        "┃ src          ┃ entries ┃ share ┃ inserts/s ┃ deletes/s ┃ drops/s ┃ container ┃",
        "┡━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━┩",
        "│ 198.18.1.11  │   1,000 │ 81.0% │       100 │        90 │     3.0 │ ctlab-c1  │",
        "│ 198.18.1.12  │     234 │ 19.0% │       0.5 │         0 │       0 │           │",
        "└──────────────┴─────────┴───────┴───────────┴───────────┴─────────┴───────────┘",
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
    if width == 200:
        assert len(head) == 5                                         # one line each at full width


def test_classic_80x24_terminal_still_shows_a_drop_row():
    out = text_of(render(frame()), width=80, height=24).splitlines()
    assert len(out) == 24
    assert "│ 198.18.1.11  │   1,000 │" in "\n".join(out)
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
        assert "│ [/x] " in out
    else:
        assert "[/x][bold red]x\\x1b[2J\\x1b]0;title\\x07" in out
