"""Rich rendering of a `top` frame (a pure function of the frame dict)."""

from __future__ import annotations

import time

from rich.console import Group
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tracer.views.escape import text

SPARK = "▁▂▃▄▅▆▇█"
KEYS = "q quit  g group  s sort  p pause  h help"
HELP = ("g: group by source, destination, port, state, container   s: sort by entries, "
        "inserts/s, deletes/s, drops/s   p: pause (the counts go on)   q: quit")


def forecast_text(fc) -> str:
    """'full in ~4m (3m-6m), schedule 12s old' or 'not filling (levels at ~9,000)'."""
    from tracer.core.forecast import human
    from tracer.core.forecast import text as _text
    t = _text(fc) if fc else ""
    if t and fc.get("schedule_age_s") is not None:
        t += f", schedule {human(fc['schedule_age_s'])} old"
    return t


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


def _pack(items: list, width: int, sep: str = "   ") -> Text:
    """Items (Text) on as few lines as fit `width`, never split inside one."""
    out, used = Text(), 0
    for it in items:
        n = it.cell_len
        if used and used + len(sep) + n > width:
            out.append("\n")
            used = 0
        elif used:
            out.append(sep)
            used += len(sep)
        out.append_text(it)
        used += n
    return out


class Header:
    """The header panel, laid out for the width it is given: the gauge,
    the rates and the losses wrap between items (never inside one), the
    backend's blind spots wrap between words."""

    def __init__(self, f: dict):
        self.f = f

    def panel(self, width: int) -> Panel:
        f, inner = self.f, max(width - 4, 20)
        t = Text()
        if f.get("max"):
            t.append_text(_pack([Text(f"table {f['count']:,} / {f['max']:,}"), gauge(f["count"], f["max"])]
                                + ([Text(f"buckets {f['buckets']:,}")] if f.get("buckets") else [])
                                + ([Text(ft, style="bold red" if f["forecast"].get("filling") else "")]
                                   if (ft := forecast_text(f.get("forecast"))) else []),
                                inner, "  "))
            t.append("\n")
        r = f["rates"]
        t.append_text(_pack([Text(f"inserts/s {_rate(r['inserts'])}"), Text(f"deletes/s {_rate(r['deletes'])}"),
                             Text(f"table-full drops/s {_rate(r['drops'])}", style="bold red" if r["drops"] else ""),
                             Text(f"early drops/s {_rate(r['early_drops'])}"),
                             Text(f"insert failures/s {_rate(r['insert_failed'])}")], inner))
        t.append("\n")
        # the two sparklines side by side when 2 x 20 points fit, else one a line
        side = inner >= 2 * (6 + 20) + 3
        n = min(40, (inner - 3) // 2 - 6 if side else inner - 6)
        fill = Text(f"fill  {sparkline(f['history']['fill'], n, top=1.0)}", style="cyan")
        drops = Text(f"drops {sparkline(f['history']['drops'], n)}", style="red")
        if side:
            fill.pad_right(6 + n - fill.cell_len)
            t.append_text(fill + Text("   ") + drops)
        else:
            t.append_text(fill + Text("\n") + drops)
        t.append("\n")
        t.append_text(text(f"backend {f['backend']} ({f['blind_spots']})", style="dim"))
        t.append("\n")
        lost = f["lost"]
        style = "bold yellow" if lost["events"] or lost.get("netlink_overruns") else "dim"
        t.append_text(_pack([Text(f"lost events {lost['events']}", style=style),
                             Text(f"netlink overruns {lost.get('netlink_overruns', 0)}", style=style),
                             Text(f"over rate limit {lost['over_rate_limit']}", style=style)], inner, ", "))
        title = text(f"cttrace top — netns {f['netns_name']} ({f['netns']})")
        if f.get("paused"):
            title.append("  [PAUSED]")
        return Panel(t, title=title, title_align="left")

    def height(self, console, options) -> int:
        return _lines(console, options, self.panel(options.max_width))

    def __rich_console__(self, console, options):
        yield self.panel(options.max_width)


def _lines(console, options, renderable) -> int:
    return len(console.render_lines(renderable, options.update(height=None), pad=False))


def header(f: dict) -> Header:
    return Header(f)


def main_table(f: dict) -> Table:
    g = f["group"]
    by_src = g == "src"          # only sources have a container beside them
    t = Table(title=Text(f"by {g} (sorted by {f['sort']})"), title_justify="left", expand=True)
    sides = g in ("container", "pod")   # DNATed entries count for their destination too
    t.add_column(g, overflow="fold")
    t.add_column("as src" if sides else "entries", justify="right")
    if sides:
        t.add_column("as dst", justify="right")
    t.add_column("share", justify="right")
    t.add_column("inserts/s", justify="right")
    t.add_column("deletes/s", justify="right")
    t.add_column("drops/s", justify="right")
    if by_src:
        t.add_column("container", overflow="fold")
    for r in f["top"]:
        cells = [text(r["key"]), f"{r['entries']:,}",
                 *([f"{r.get('entries_as_destination', 0):,}"] if sides else []),
                 f"{100 * r['share']:.1f}%",
                 _rate(r["inserts_per_s"]), _rate(r["deletes_per_s"]),
                 Text(_rate(r["drops_per_s"]), style="bold red" if r["drops_per_s"] else "")]
        t.add_row(*cells, *([text(r.get("container"))] if by_src else []))
    return t


def drops_table(f: dict) -> Table:
    t = Table(title=Text("latest drops"), title_justify="left", expand=True)
    for c in ("time", "reason", "tuple", "container"):
        t.add_column(c, overflow="fold")
    for d in f["drops"]:
        ts = time.strftime("%H:%M:%S", time.localtime(d["ts"]))
        tup = f"{d['proto']} {d['src']}:{d['sport']} -> {d['dst']}:{d['dport']}"
        t.add_row(Text(ts), text(d["reason"], style="red" if d["reason"] == "table_full" else "yellow"),
                  text(tup), text(d.get("container")))
    return t


class _Screen:
    """The full-screen layout; the header takes the lines it needs at the
    terminal's width (nothing cut), the tables share the rest."""

    def __init__(self, f: dict, show_help: bool):
        self.f, self.show_help = f, show_help

    def __rich_console__(self, console, options):
        head = Header(self.f)
        foot = Text(HELP if self.show_help else KEYS, style="reverse")
        lay = Layout()
        lay.split_column(Layout(head, name="head", size=head.height(console, options)),
                         Layout(main_table(self.f), name="main", ratio=2, minimum_size=6),
                         Layout(drops_table(self.f), name="drops", ratio=1, minimum_size=6),
                         Layout(foot, name="foot", size=_lines(console, options, foot)))
        yield lay


def render(f: dict, show_help: bool = False, full_screen: bool = True):
    if not full_screen:
        return Group(header(f), main_table(f), drops_table(f))
    return _Screen(f, show_help)
