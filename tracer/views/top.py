"""Rich rendering of a `top` frame (a pure function of the frame dict)."""

from __future__ import annotations

import time

from rich.console import Group
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

SPARK = "▁▂▃▄▅▆▇█"
KEYS = "q quit  g group  s sort  p pause  h help"
HELP = ("g: group by source, destination, port, state, container   s: sort by entries, "
        "inserts/s, deletes/s, drops/s   p: pause (the counts go on)   q: quit")


def sparkline(values, width: int = 40, top: float | None = None) -> str:
    vals = list(values)[-width:]
    if not vals:
        return ""
    hi = top if top is not None else max(vals) or 1
    return "".join(SPARK[min(int(v / hi * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] if hi else SPARK[0]
                   for v in vals)


def gauge(count: int, limit: int, width: int = 30) -> Text:
    frac = min(count / limit, 1.0) if limit else 0.0
    full = round(frac * width)
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "bold red"
    return Text("█" * full, style=style) + Text("░" * (width - full), style="dim") + \
        Text(f" {100 * frac:5.1f}%", style=style)


def _rate(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 10 or v == 0 else f"{v:.1f}"


def header(f: dict) -> Panel:
    t = Text()
    if f.get("max"):
        t.append(f"table {f['count']:,} / {f['max']:,}  ")
        t.append_text(gauge(f["count"], f["max"]))
        t.append(f"   buckets {f['buckets']:,}" if f.get("buckets") else "")
    r = f["rates"]
    t.append("\n")
    t.append(f"inserts/s {_rate(r['inserts'])}   deletes/s {_rate(r['deletes'])}   ")
    t.append(f"table-full drops/s {_rate(r['drops'])}", style="bold red" if r["drops"] else "")
    t.append(f"   early drops/s {_rate(r['early_drops'])}   insert failures/s {_rate(r['insert_failed'])}")
    t.append("\n")
    t.append(f"fill  {sparkline(f['history']['fill'], top=1.0)}\n", style="cyan")
    t.append(f"drops {sparkline(f['history']['drops'])}\n", style="red")
    lost = f["lost"]
    t.append(f"backend {f['backend']} ({f['blind_spots']})", style="dim")
    t.append(f"   lost events {lost['events']}, netlink overruns {lost['netlink_overruns']}, "
             f"over rate limit {lost['over_rate_limit']}",
             style="bold yellow" if lost["events"] or lost["netlink_overruns"] else "dim")
    title = f"cttrace top — netns {f['netns_name']} ({f['netns']})"
    if f.get("paused"):
        title += "  [PAUSED]"
    return Panel(t, title=title, title_align="left")


def main_table(f: dict) -> Table:
    g = f["group"]
    t = Table(title=f"by {g} (sorted by {f['sort']})", title_justify="left", expand=True)
    t.add_column(g, overflow="fold")
    t.add_column("entries", justify="right")
    t.add_column("share", justify="right")
    t.add_column("inserts/s", justify="right")
    t.add_column("deletes/s", justify="right")
    t.add_column("drops/s", justify="right")
    t.add_column("container", overflow="fold")
    for r in f["top"]:
        t.add_row(Text(r["key"]), f"{r['entries']:,}", f"{100 * r['share']:.1f}%",
                  _rate(r["inserts_per_s"]), _rate(r["deletes_per_s"]),
                  Text(_rate(r["drops_per_s"]), style="bold red" if r["drops_per_s"] else ""),
                  Text(r.get("container") or ""))
    return t


def drops_table(f: dict) -> Table:
    t = Table(title="latest drops", title_justify="left", expand=True)
    for c in ("time", "reason", "tuple", "container"):
        t.add_column(c, overflow="fold")
    for d in f["drops"]:
        ts = time.strftime("%H:%M:%S", time.localtime(d["ts"]))
        tup = f"{d['proto']} {d['src']}:{d['sport']} -> {d['dst']}:{d['dport']}"
        t.add_row(ts, Text(d["reason"], style="red" if d["reason"] == "table_full" else "yellow"),
                  Text(tup), Text(d.get("container") or ""))
    return t


def render(f: dict, show_help: bool = False, full_screen: bool = True):
    foot = Text(HELP if show_help else KEYS, style="reverse")
    if not full_screen:
        return Group(header(f), main_table(f), drops_table(f))
    lay = Layout()
    lay.split_column(Layout(header(f), name="head", size=7), Layout(main_table(f), name="main", ratio=2),
                     Layout(drops_table(f), name="drops", ratio=1), Layout(foot, name="foot", size=1))
    return lay
