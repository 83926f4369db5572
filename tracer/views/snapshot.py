"""Rich rendering of a snapshot report (a pure function of its dict)."""

from __future__ import annotations

from rich.columns import Columns
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tracer.views.escape import safe, text

TITLES = [
    ("by_src", "Original source"), ("by_dst", "Original destination"),
    ("by_proto_dport", "Destination port"), ("by_state", "TCP state"),
    ("by_proto", "Protocol"), ("by_flags", "Flags"), ("by_family", "Family"),
    ("by_zone", "Zone"), ("by_mark", "Mark"), ("by_proto_state", "Other states"),
]


def _fill_bar(count: int, limit: int, width: int = 30) -> Text:
    frac = min(count / limit, 1.0) if limit else 0.0
    full = round(frac * width)
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "bold red"
    return Text("█" * full, style=style) + Text("░" * (width - full), style="dim")


def _header(rep: dict) -> Panel:
    lines = Text()
    lines.append(f"source: {safe(rep['source'])}")   # Text.append: never parsed as markup
    if rep.get("netns"):
        lines.append(f"   netns: {safe(rep['netns'])}")
    lines.append("\n")
    lines.append(f"entries: {rep['total']:,}", style="bold")
    if rep.get("filters"):
        lines.append(f" matching {rep['filters']} of {rep['entries_read']:,} read")
    if rep.get("malformed"):
        lines.append(f"   malformed lines: {rep['malformed']:,}", style="yellow")
    tab = rep.get("table")
    if tab and tab.get("max"):
        lines.append("\n")
        lines.append(f"table: {tab['count']:,} / {tab['max']:,} ")
        lines.append_text(_fill_bar(tab["count"], tab["max"]))
        lines.append(f" {100 * tab['count'] / tab['max']:.1f}%")
        if tab.get("buckets"):
            lines.append(f"   buckets: {tab['buckets']:,}")
    if tab and tab.get("stats"):
        st = tab["stats"]
        keys = ("drop", "early_drop", "insert_failed", "invalid", "error",
                "clash_resolve", "chaintoolong", "search_restart")
        lines.append("\n")
        lines.append(f"kernel counters ({tab['stats_source']}): ")
        for k in keys:
            if k in st:
                bad = st[k] and k in ("drop", "early_drop", "insert_failed", "chaintoolong")
                lines.append(f"{k}={st[k]:,} ", style="bold red" if bad else "")
    if rep.get("dump_interrupted"):
        lines.append("\nthe table changed during the dump: counts are a close approximation",
                     style="yellow")
    return Panel(lines, title="cttrace snapshot", title_align="left")


def _table(title: str, data: dict, total: int, other: dict | None, names: dict | None = None) -> Table:
    t = Table(title=title, title_justify="left", box=None, pad_edge=False,
              show_header=False)
    t.add_column("key", overflow="fold", max_width=40)
    t.add_column("n", justify="right")
    t.add_column("%", justify="right", style="dim")
    for k, n in data.items():
        label = f"{k} ({names[k]})" if names and k in names else k
        t.add_row(text(label), f"{n:,}", f"{100 * n / total:.1f}" if total else "")
    if other:
        t.add_row(Text(f"({other['keys']:,} more)", style="dim"), f"{other['entries']:,}",
                  f"{100 * other['entries'] / total:.1f}" if total else "")
    return t


def render(rep: dict) -> Group:
    parts = [_header(rep)]
    tables = []
    for key, title in TITLES:
        data = rep.get(key) or {}
        if key == "by_proto_state":
            data = {k: n for k, n in data.items() if not k.startswith("tcp/")}
        if not data:
            continue
        tables.append(_table(title, data, rep["total"], rep.get("others", {}).get(key),
                             rep.get("containers") if key in ("by_src", "by_dst") else None))
    if tables:
        parts.append(Columns(tables, padding=(1, 4)))
    elif rep["total"] == 0:
        parts.append(Text("no entries" + (" match the filters" if rep.get("filters") else "")))
    return Group(*parts)
