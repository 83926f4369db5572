"""SVG charts on a shared wall-clock time axis (pure: data in, markup out),
for the HTML report. Every chart has labelled time ticks, a y axis with
its unit, a <title> on every point (hover) and the drop bursts marked.
Every string from a capture goes through esc() by the caller's rules:
here only numbers, times and the caller's escaped labels are written."""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass

W, LEFT, RIGHT, TOP, BOTTOM = 880, 72, 16, 22, 36     # the plot area's margins, pixels
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TICKS = 8
LIMIT_SCALE = 3        # the limit joins a chart's scale when at most this many times the data's peak
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#637939", "#8c6d31", "#843c39")
OTHER = "#b0b0b0"


def fmt(v: float) -> str:
    """A number for a label: 10,700 / 2.5 / 0.25."""
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.2f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}"


def nice_max(hi: float, ticks: int = 4) -> tuple[float, float]:
    """(top, step): a round top >= hi divided in at most `ticks` round steps."""
    if hi <= 0:
        return 1.0, 0.25 if ticks >= 4 else 0.5
    raw = hi / ticks
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if step >= 1:
        step = math.ceil(step)
    return step * math.ceil(hi / step - 1e-9), step


@dataclass
class TimeAxis:
    """Wall-clock seconds t0..t1 mapped onto the plot's width."""
    t0: float
    t1: float

    def __post_init__(self):
        if self.t1 <= self.t0:
            self.t1 = self.t0 + 1

    def x(self, t: float) -> float:
        return LEFT + (min(max(t, self.t0), self.t1) - self.t0) / (self.t1 - self.t0) * (W - LEFT - RIGHT)

    def ticks(self) -> list[tuple[float, str]]:
        """Round wall-clock times inside the axis, at most MAX_TICKS, labelled
        HH:MM:SS (HH:MM for steps of a minute or more)."""
        span = self.t1 - self.t0
        step = next((s for s in TIME_STEPS if span / s <= MAX_TICKS), TIME_STEPS[-1])
        # round in local time: a 15-minute tick falls on :00, :15, ...
        off = time.localtime(self.t0).tm_gmtoff
        first = math.ceil((self.t0 + off) / step) * step - off
        out, t = [], first
        while t <= self.t1 + 1e-6:
            out.append((t, time.strftime("%H:%M:%S" if step < 60 else "%H:%M", time.localtime(t))))
            t += step
        return out

    def zone(self) -> str:
        return time.strftime("%Z", time.localtime(self.t0)) or "local time"


def chart(axis: TimeAxis, width: float, label: str, unit: str, series: list[dict], hover: list,
          bursts: list | None = None, limit: list | None = None, height: int = 190, css: str = "") -> str:
    """One chart. series: {"name", "color", "kind": "line"|"bars"|"area",
    "points": [(t, value)]} drawn in order (bars and areas stack on the ones
    before of the same kind); hover: [(t, text)] one invisible column per
    point `width` seconds wide with a <title>; bursts: [(first, last,
    label)]; limit: [(t, value)], the table's limit as a dashed step line,
    in the scale where it is within LIMIT_SCALE times the data's peak (a
    limit far above the data would flatten it), else named at the top."""
    h = height
    py0, py1 = TOP, h - BOTTOM                     # the plot's top and bottom
    stacked: dict = {}
    hi = 0.0
    for s in series:                               # the stacks' tops decide the scale
        if s["kind"] == "line":
            hi = max([hi] + [v for _, v in s["points"] if v is not None])
        else:
            base = stacked.setdefault(s["kind"], {})
            for t, v in s["points"]:
                base[t] = base.get(t, 0) + (v or 0)
            hi = max([hi] + list(base.values()))
    lim = [(t, v) for t, v in (limit or []) if v]
    near = [v for _, v in lim if v <= LIMIT_SCALE * max(hi, 1)]
    hi = max([hi] + near)
    top, step = nice_max(hi * 1.04)          # a line at the maximum stays off the frame

    def y(v: float) -> float:
        return py1 - (v / top) * (py1 - py0)

    out = [f'<svg class="chart {css}" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" '
           f'aria-label="{label}">',
           f'<rect class="plot" x="{LEFT}" y="{py0}" width="{W - LEFT - RIGHT}" height="{py1 - py0}"/>']
    # y ticks and grid
    v = 0.0
    while v <= top + 1e-9:
        yy = y(v)
        out.append(f'<g class="ytick"><line x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                   f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{fmt(v)}</text></g>')
        v += step
    out.append(f'<text class="unit" x="{LEFT - 6}" y="{py0 - 8}" text-anchor="end">{unit}</text>')
    # time ticks
    for t, lab in axis.ticks():
        xx = axis.x(t)
        out.append(f'<g class="tick" data-t="{t:.3f}"><line x1="{xx:.1f}" x2="{xx:.1f}" y1="{py0}" '
                   f'y2="{py1 + 4}"/><text x="{xx:.1f}" y="{py1 + 17}" text-anchor="middle">{lab}</text></g>')
    out.append(f'<text class="unit" x="{W - RIGHT}" y="{h - 4}" text-anchor="end">time ({html.escape(axis.zone())})'
               '</text>')
    # drop bursts, under the data
    for first, last, blabel in bursts or []:
        x0, x1 = axis.x(first), axis.x(last)
        if x1 - x0 < 4:
            x0, x1 = (x0 + x1) / 2 - 2, (x0 + x1) / 2 + 2
        out.append(f'<rect class="burst" data-first="{first:.3f}" data-last="{last:.3f}" x="{x0:.1f}" '
                   f'y="{py0}" width="{x1 - x0:.1f}" height="{py1 - py0}"><title>{blabel}</title></rect>')
    # the data
    bases: dict = {}
    for s in series:
        pts = [(t, v) for t, v in s["points"] if v is not None]
        if not pts:
            continue
        if s["kind"] == "line":
            path = " ".join(f"{axis.x(t):.1f},{y(v):.1f}" for t, v in pts)
            out.append(f'<polyline class="series" data-name="{s["name"]}" fill="none" stroke="{s["color"]}" '
                       f'stroke-width="2" points="{path}"/>')
            if len(pts) == 1:
                t, v = pts[0]
                out.append(f'<circle cx="{axis.x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{s["color"]}"/>')
        elif s["kind"] == "bars":
            base = bases.setdefault("bars", {})
            for t, v in pts:
                if v <= 0:
                    continue
                b = base.get(t, 0)
                x0, x1 = axis.x(t), axis.x(t + width)
                out.append(f'<rect class="bar" fill="{s["color"]}" x="{x0:.1f}" y="{y(b + v):.1f}" '
                           f'width="{max(x1 - x0 - 1, 2):.1f}" height="{max(y(b) - y(b + v), 1):.1f}"/>')
                base[t] = b + v
        else:                                       # a stacked area, point to point
            base = bases.setdefault("area", {})
            lower = [(t, base.get(t, 0)) for t, _ in pts]
            upper = [(t, base.get(t, 0) + v) for t, v in pts]
            if len(pts) == 1:                       # one sample: a band one point wide
                lower = lower + [(pts[0][0] + width, lower[0][1])]
                upper = upper + [(pts[0][0] + width, upper[0][1])]
            poly = " ".join(f"{axis.x(t):.1f},{y(v):.1f}" for t, v in upper + lower[::-1])
            out.append(f'<polygon class="area" data-name="{s["name"]}" fill="{s["color"]}" '
                       f'fill-opacity="0.85" stroke="#fff" stroke-width="0.5" points="{poly}"/>')
            for t, v in pts:
                base[t] = base.get(t, 0) + v
    if lim:
        out.append(_limit(axis, width, lim, top, y, py0))
    # hover: one column per point, its values in a <title>
    for t, text in hover:
        x0, x1 = axis.x(t), axis.x(t + width)
        out.append(f'<rect class="hover" x="{x0:.1f}" y="{py0}" width="{max(x1 - x0, 1):.1f}" '
                   f'height="{py1 - py0}"><title>{text}</title></rect>')
    out.append("</svg>")
    return "".join(out)


def _limit(axis: TimeAxis, width: float, lim: list, top: float, y, py0: float) -> str:
    """The limit as a dashed step line where it is on the scale, and its
    value(s) named: "limit 10,700", "limit 262,144 (above the scale)"."""
    segs, parts = [], []
    for i, (t, v) in enumerate(lim):
        t2 = lim[i + 1][0] if i + 1 < len(lim) else t + width
        if v <= top:
            segs.append(f'<line x1="{axis.x(t):.1f}" x2="{axis.x(t2):.1f}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>')
    values = sorted({v for _, v in lim})
    on = [v for v in values if v <= top]
    off = [v for v in values if v > top]
    label = "limit " + ", ".join(f"{v:,.0f}" for v in on)
    if off:
        label = (label + "; " if on else "limit ") + ", ".join(f"{v:,.0f}" for v in off) + " (above the scale)"
    ly = y(max(on)) - 5 if on else py0 + 12
    parts.append(f'<text x="{W - RIGHT - 4}" y="{ly:.1f}" text-anchor="end">{label}</text>')
    return '<g class="limit">' + "".join(segs + parts) + "</g>"


def legend(items: list[tuple[str, str]]) -> str:
    """[(colour, escaped label)] as a row of swatches."""
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{lab}</span>' for c, lab in items) + "</p>"
