"""Rich rendering of a `top` frame (a pure function of the frame dict)."""

from __future__ import annotations

import time

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from tracer.views.escape import text

SPARK = "▁▂▃▄▅▆▇█"
KEYS = "q quit  g group  s sort  p pause  h help"
WIDE = 150             # from this width, the drops sit beside the main table
HISTORY_MIN, HISTORY_MAX = 6, 30   # lines for the tall history below the tables
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

    def __init__(self, f: dict, sparks: bool = True):
        self.f, self.sparks = f, sparks

    def panel(self, width: int) -> Panel:
        f, inner = self.f, max(width - 4, 20)
        t = Text()
        if f.get("max"):
            t.append_text(_pack([Text(f"table {f['count']:,} / {f['max']:,}"),
                                 gauge(f["count"], f["max"], 30 if inner >= 100 else 20)]
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
        # since the start: the totals stay when a burst is over (exact: the kernel's counters, the probes' maps)
        tot, lost = f.get("totals") or {}, f["lost"]
        bad = lambda n: "bold red" if n else ""  # noqa: E731
        warn = "bold yellow" if lost["events"] or lost.get("netlink_overruns") else "dim"
        t.append_text(_pack([Text("since start:", style="bold")]
                            + [Text(f"{lab} {tot.get(k, 0):,}", style=bad(tot.get(k, 0))) for k, lab in
                               (("table_full", "table-full drops"), ("insert_failed", "clash drops"),
                                ("rule", "rule drops"), ("early_drops", "early drops"))]
                            + [Text(f"lost events {lost['events']}", style=warn)]
                            # the other losses once there are any (lost events always: never silent)
                            + [Text(f"{lab} {lost.get(k) or 0:,}", style=warn) for k, lab in
                               (("netlink_overruns", "netlink overruns"), ("over_rate_limit", "over rate limit"))
                               if lost.get(k)], inner, "  "))
        t.append("\n")
        if self.sparks:
            self._sparks(t, inner)
        t.append_text(text(f"backend {f['backend']} ({f['blind_spots']})", style="dim"))
        title = text(f"cttrace top — netns {f['netns_name']} ({f['netns']})")
        if f.get("paused"):
            title.append("  [PAUSED]")
        return Panel(t, title=title, title_align="left")

    def _sparks(self, t: Text, inner: int) -> None:
        f = self.f
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

    def height(self, console, options) -> int:
        return _lines(console, options, self.panel(options.max_width))

    def __rich_console__(self, console, options):
        yield self.panel(options.max_width)


def _lines(console, options, renderable) -> int:
    return len(console.render_lines(renderable, options.update(height=None), pad=False))


def header(f: dict) -> Header:
    return Header(f)


def _table(title: str, compact: bool) -> Table:
    """A table with a title; compact (full screen): no outer frame, one rule under the head."""
    if compact:
        return Table(title=Text(title, style="bold"), title_justify="left", expand=True,
                     box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    return Table(title=Text(title), title_justify="left", expand=True)


def main_table(f: dict, rows: int | None = None, compact: bool = False) -> Table:
    g = f["group"]
    by_src = g == "src"          # only sources have a container beside them
    shown = f["top"] if rows is None else f["top"][:rows]
    more = len(f["top"]) - len(shown)
    t = _table(f"by {g} (sorted by {f['sort']})" + (f", {more} more below" if more else ""), compact)
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
    for r in shown:
        cells = [text(r["key"]), f"{r['entries']:,}",
                 *([f"{r.get('entries_as_destination', 0):,}"] if sides else []),
                 f"{100 * r['share']:.1f}%",
                 _rate(r["inserts_per_s"]), _rate(r["deletes_per_s"]),
                 Text(_rate(r["drops_per_s"]), style="bold red" if r["drops_per_s"] else "")]
        t.add_row(*cells, *([text(r.get("container"))] if by_src else []))
    return t


def drops_summary(f: dict, width: int) -> Text:
    """Drops since the start by reason and by container (or source): two
    packed lines, exact (the probes' counts)."""
    reasons = f.get("drops_by_reason") or {}
    who = f.get("drops_by_container") or []
    out = _pack([Text("drops by reason:", style="bold")]
                + ([text(f"{k} {v:,}", style="red" if k == "table_full" else "yellow")
                    for k, v in reasons.items()] or [Text("none", style="dim")]), width, "  ")
    out.append("\n")
    out.append_text(_pack([Text("by container:", style="bold")]
                          + ([text(f"{w['name']} {w['drops']:,}" + (f" ({w['sources']} sources)"
                                                                    if w.get("sources", 1) > 1 else ""))
                              for w in who] or [Text("none", style="dim")]), width, "  "))
    return out


def drops_table(f: dict, rows: int | None = None, compact: bool = False) -> Table:
    t = _table("latest drops", compact)
    for c in ("time", "reason", "tuple", "container"):
        t.add_column(c, overflow="fold" if not compact else "ellipsis", no_wrap=compact)
    for d in f["drops"] if rows is None else f["drops"][:rows]:
        ts = time.strftime("%H:%M:%S", time.localtime(d["ts"]))
        tup = f"{d['proto']} {d['src']}:{d['sport']} -> {d['dst']}:{d['dport']}"
        t.add_row(Text(ts), text(d["reason"], style="red" if d["reason"] == "table_full" else "yellow"),
                  text(tup), text(d.get("container")))
    return t


class _Screen:
    """The full-screen layout: the header takes the lines it needs at the
    terminal's width (nothing cut); the tables take their natural heights,
    as many rows as the space holds (no gaps between them); from WIDE
    columns the drops sit beside the main table."""

    def __init__(self, f: dict, show_help: bool):
        self.f, self.show_help = f, show_help

    def __rich_console__(self, console, options):
        f, w = self.f, options.max_width
        h = options.height or console.height
        foot = Text(HELP if self.show_help else KEYS, style="reverse")
        head = Header(f).panel(w)
        room = h - _lines(console, options, head) - _lines(console, options, foot)
        # with HISTORY_MIN lines to spare, the history is drawn taller below instead of in the header
        tall = room - self._least(console, options, w) >= HISTORY_MIN
        if tall:
            head = Header(f, sparks=False).panel(w)
            room = h - _lines(console, options, head) - _lines(console, options, foot)
        if w >= WIDE:
            left_w = (w * 3) // 5
            right_w = w - left_w - 2
            main = _fit(console, options, left_w, lambda n: main_table(f, n, True), len(f["top"]), room)
            drops = _fit(console, options, right_w, lambda n: self._drops(n, right_w), len(f["drops"]), room)
            grid = Table.grid(expand=True, padding=(0, 2))
            grid.add_column(width=left_w)
            grid.add_column(width=right_w)
            grid.add_row(main[0], drops[0])
            body, used = [grid], max(main[1], drops[1])
        else:
            # the drops keep their summary and two rows; the main table takes what it needs of the rest
            least = _lines(console, options, self._drops(min(2, len(f["drops"])), w))
            main = _fit(console, options, w, lambda n: main_table(f, n, True), len(f["top"]), room - least)
            drops = _fit(console, options, w, lambda n: self._drops(n, w), len(f["drops"]), room - main[1])
            body, used = [main[0], drops[0]], main[1] + drops[1]
        left = room - used
        if tall and left >= 3:              # the space the tables leave: the history, taller
            body.append(history(f, w, min(left, HISTORY_MAX)))
            left -= min(left, HISTORY_MAX)
        lines = console.render_lines(Group(head, *body), options.update(height=None), pad=True)
        lines += [[Segment(" " * w)]] * max(left, 0)
        lines += console.render_lines(foot, options.update(height=None), pad=True)
        for line in lines[:h]:              # every line the terminal's width: nothing left of the last frame
            yield from line
            yield Segment.line()

    def _least(self, console, options, w: int) -> int:
        """The lines the tables need at least: all their rows, or what a wide screen shows."""
        f = self.f
        if w >= WIDE:
            lw = (w * 3) // 5
            return max(_lines(console, options.update(width=lw), main_table(f, None, True)),
                       _lines(console, options.update(width=w - lw - 2), self._drops(len(f["drops"]), w - lw - 2)))
        return _lines(console, options, main_table(f, None, True)) + \
            _lines(console, options, self._drops(len(f["drops"]), w))

    def _drops(self, n: int, width: int):
        f = self.f
        if not f["drops"]:
            return Group(drops_summary(f, width), Text("no drop events since start", style="dim"))
        return Group(drops_summary(f, width), drops_table(f, n, True))


def bars(values, width: int, height: int, top: float | None = None) -> list[str]:
    """The last `width` values as a bar chart `height` lines tall (eighth
    blocks), right-aligned: the newest at the right edge."""
    vals = list(values)[-width:]
    hi = top if top is not None else (max(vals, default=0) or 1)
    levels = [min(round(v / hi * height * 8), height * 8) if hi else 0 for v in vals]
    rows = []
    for row in range(height - 1, -1, -1):
        cells = "".join("█" if lv >= (row + 1) * 8 else (" " + SPARK[:-1])[max(lv - row * 8, 0)]
                        if lv > row * 8 else " " for lv in levels)
        rows.append(cells.rjust(width))
    return rows


def history(f: dict, width: int, lines: int) -> Text:
    """Fill and table-full drops per interval over the last intervals, as
    tall as `lines` allows (a title line each), side by side when wide."""
    hist, iv = f["history"], f.get("interval") or 0
    fill, drops = list(hist.get("fill", [])), list(hist.get("drops", []))
    every = f" every {iv:.3g} s" if iv else ""
    side = width >= 100
    cw = (width - 3) // 2 if side else width
    h = lines - 1 if side else max((lines - 2) // 2, 1)
    ft = Text(f"fill, last {len(fill)} samples{every} (top: 100%)"[:cw], style="bold")
    dt = Text(f"table-full drops/s, max {max(drops, default=0):,.0f}"[:cw], style="bold")
    fb = [Text(x, style="cyan") for x in bars(fill, cw, h, top=1.0)]
    db = [Text(x, style="red") for x in bars(drops, cw, h)]
    out = Text()
    if side:
        rows = [(ft, dt)] + list(zip(fb, db))
        for i, (a, b) in enumerate(rows):
            a = a.copy()
            a.pad_right(cw - a.cell_len)
            out.append_text(a + Text("   ") + b)
            if i < len(rows) - 1:
                out.append("\n")
    else:
        parts = [ft, *fb, dt, *db]
        for i, x in enumerate(parts):
            out.append_text(x)
            if i < len(parts) - 1:
                out.append("\n")
    return out


class _Summary:
    """drops_summary at the width it is rendered in."""

    def __init__(self, f: dict):
        self.f = f

    def __rich_console__(self, console, options):
        yield drops_summary(self.f, options.max_width)


def _fit(console, options, width: int, make, most: int, room: int):
    """(make(n), its lines) for the largest n <= most whose rendering fits `room` lines."""
    opts = options.update(width=width, height=None)
    for n in range(most, -1, -1):
        r = make(n)
        used = len(console.render_lines(r, opts, pad=False))
        if used <= room or n == 0:
            return r, used
    return make(0), 0


def render(f: dict, show_help: bool = False, full_screen: bool = True):
    if not full_screen:
        return Group(header(f), main_table(f), _Summary(f), drops_table(f))
    return _Screen(f, show_help)
