"""`cttrace report`: the analysis of a capture (pure), and its renderings:
terminal (rich), JSON, and a self-contained HTML page with SVG charts."""

from __future__ import annotations

import html
import math
import time
from collections import Counter

from tracer import forecast as fc
from tracer.capture import Capture, counter_deltas
from tracer.doctor import HostState, diagnose, table_forecast


MAX_POINTS = 3600


def capture_state(cap: Capture) -> HostState:
    """The captured host's state (Capture.host_state) with what the forecast
    needs to know about a capture: when its dump was read (at the end, or at
    the start when the capture was cut short before its end record) and the
    new entries its insert events showed over the window."""
    h = cap.host_state()
    stats = cap.of("stats")
    if len(stats) >= 2 and h.ages:
        t0, t1 = stats[0]["t"], stats[-1]["t"]
        h.dump_lag = 0.0 if cap.of("end") else max(t1 - t0, 0.0)
        h.inserts_seen = sum(1 for r in cap.of("insert") if t0 <= r["t"] <= t1)
    return h


def capture_forecast(h: HostState) -> dict:
    """Time to full at the capture's end (doctor.table_forecast), and its text."""
    if not h.ages or not h.max or not h.window:
        why = ("no remaining timeouts recorded" if not h.ages else
               "no limit recorded" if not h.max else "fewer than two samples")
        return {"filling": None, "reason": why, "text": f"unknown ({why})"}
    f = table_forecast(h, h.max)
    f["text"] = fc.text(f) or "unknown"
    f["inserts"] = h.deltas.get("insert") or h.inserts_seen or 0
    f["seconds_sampled"] = round(h.window, 3)
    return f


def analyse(cap: Capture, top: int = 10) -> dict:
    stats = cap.of("stats")
    ins, dels, drops = cap.of("insert"), cap.of("delete"), cap.of("drop")
    t0 = stats[0]["t"] if stats else (cap.records[0]["t"] if cap.records else 0)
    t1 = stats[-1]["t"] if stats else t0
    deltas = counter_deltas(stats)
    delta = lambda k: int(deltas.get(k, 0))  # noqa: E731
    # timeline: one point per second, or wider buckets for long captures
    width = max(1, math.ceil((t1 - t0 + 1) / MAX_POINTS))
    n = (int((t1 - t0) // width) + 1) if stats else 0
    tl = [{"t": i * width, "count": None, "max": None, "drops": 0, "inserts": 0, "deletes": 0}
          for i in range(n)]

    def bucket(t: float) -> int | None:
        i = int((t - t0) // width)
        return i if 0 <= i < n else None

    prev = None
    for s in stats:
        i = bucket(s["t"])
        tl[i]["count"], tl[i]["max"] = s.get("count"), s.get("max")
        if prev is not None:     # the interval's table-full drops, at its middle
            inc = lambda k: (lambda o, n: n - o if n >= o else n)(  # noqa: E731
                prev["kernel"].get(k, 0), s["kernel"].get(k, 0))
            j = bucket((prev["t"] + s["t"]) / 2)
            tl[j if j is not None else i]["drops"] += max(int(inc("drop") - inc("insert_failed")), 0)
        prev = s
    last = None
    for x in tl:                 # samples every interval > 1 s: carry the fill forward
        if x["count"] is None and last is not None:
            x["count"], x["max"] = last
        elif x["count"] is not None:
            last = (x["count"], x["max"])
    for recs, key in ((ins, "inserts"), (dels, "deletes")):
        for r in recs:
            i = bucket(r["t"])
            if i is not None:
                tl[i][key] += 1
    by_src_ins = Counter(r["src"] for r in ins)
    names = {r["src"]: r.get("container") for r in ins + drops if r.get("container")}
    end = cap.of("end")
    exact = (end[-1].get("sources") if end else None) or {}
    drop_src = Counter(exact) if exact else Counter(r["src"] for r in drops)
    bursts = sorted((x for x in tl if x["drops"]), key=lambda x: -x["drops"])[:5]
    state = capture_state(cap)
    start_state = cap.header.get("state") or {}
    lost = int(sum(r.get("n", 1) for r in cap.of("lost")))
    return {
        "capture": {"host": cap.header.get("host"), "kernel": cap.header.get("kernel"),
                    "backend": cap.header.get("backend"), "netns": cap.header.get("netns"),
                    "started": t0, "seconds": round(t1 - t0, 3), "records": len(cap.records),
                    "truncated": cap.truncated, "bad_records": cap.bad_records},
        # drops: the kernel's `drop` (every packet conntrack dropped); a clash at
        # confirm counts in both `drop` and `insert_failed`, so table_full is
        # the difference
        "totals": {"inserts": len(ins), "deletes": len(dels), "drops": delta("drop"),
                   "table_full": max(delta("drop") - delta("insert_failed"), 0),
                   "drop_events": len(drops), "early_drops": delta("early_drop"),
                   "insert_failed": delta("insert_failed"), "lost": lost,
                   "drop_events_by_reason": dict(Counter(r.get("reason", "") for r in drops))},
        "fill": {"start": _fill(stats[0]) if stats else None, "end": _fill(stats[-1]) if stats else None,
                 "max": stats[-1].get("max") if stats else None},
        "timeline": tl,
        "timeline_seconds_per_point": width,
        "top_sources_by_inserts": [{"src": s, "inserts": n, "container": names.get(s)}
                                   for s, n in by_src_ins.most_common(top)],
        "top_sources_by_drops": [{"src": s, "drops": n, "container": names.get(s)}
                                 for s, n in drop_src.most_common(top)],
        "state_mix": {"start": start_state.get("by_state", {}), "end": state.by_state},
        "drop_bursts": [{"second": x["t"], "drops": x["drops"]} for x in bursts],
        "forecast": capture_forecast(state),
        "findings": [f.to_dict() for f in diagnose(state)],
    }


def _forecast_line(f: dict | None) -> str:
    """'full in ~4m (3m-6m) at 120.5/s inserts, life 100 s', 'not filling ...', 'unknown (...)'."""
    if not f:
        return "unknown (an older report)"
    if f.get("filling") is None:
        return f.get("text") or "unknown"
    life = f" new entries live {f['life']:,.0f} s" if f.get("life") else ""
    return (f"{f['text']} at {f['rate']:,.1f} new entries/s (band {f['rate_low']:,.1f}-"
            f"{f['rate_high']:,.1f}/s over {f.get('seconds_sampled', 0):,.0f} s),{life} against "
            f"max {f['limit']:,}; refreshed entries live longer than this model says")


def _fill(s: dict):
    return s["count"] / s["max"] if s.get("count") is not None and s.get("max") else None


# -- terminal -------------------------------------------------------------------------------
def render(rep: dict):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from tracer.views.escape import safe, text
    from tracer.views.top import sparkline
    c, t = rep["capture"], rep["totals"]
    head = Text()
    # everything in a capture was written on another host: shown literally, never as markup
    head.append(f"{safe(c['host'])} · kernel {safe(c['kernel'])} · backend {safe(c['backend'])} · "
                f"netns {safe(c['netns'])}\n")
    head.append(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c['started']))}, {c['seconds']:.0f} s, "
                f"{c['records']:,} records" + (" (TRUNCATED)" if c["truncated"] else "") + "\n")
    head.append(f"inserts {t['inserts']:,}  deletes {t['deletes']:,}  table-full drops {t['table_full']:,}  "
                f"early drops {t['early_drops']:,}  insert failures {t['insert_failed']:,}  lost {t['lost']}\n",
                style="bold")
    tl = rep["timeline"]
    fills = [(x["count"] or 0) / x["max"] if x.get("max") else 0 for x in tl]
    head.append(f"forecast: {_forecast_line(rep.get('forecast'))}\n", style="bold")
    head.append(f"fill   {sparkline(fills, 60, top=1.0)}\n", style="cyan")
    head.append(f"drops  {sparkline([x['drops'] for x in tl], 60)}\n", style="red")
    head.append(f"insert {sparkline([x['inserts'] for x in tl], 60)}", style="green")
    parts = [Panel(head, title=Text("cttrace report"), title_align="left")]
    for key, col, title in (("top_sources_by_inserts", "inserts", "top sources by inserts"),
                            ("top_sources_by_drops", "drops", "top sources by drops")):
        tab = Table(title=Text(title), title_justify="left")
        tab.add_column("source")
        tab.add_column(col, justify="right")
        tab.add_column("container")
        for r in rep[key]:
            tab.add_row(text(r["src"]), f"{r[col]:,}", text(r.get("container")))
        parts.append(tab)
    for f in rep["findings"]:
        parts.append(Panel(text(f"{f['message']}\nevidence: {f['evidence']}\nfix:\n{f['fix']}", newlines=True),
                           title=text(f"{f['severity']}: {f['id']}"), title_align="left"))
    return Group(*parts)


# -- HTML -------------------------------------------------------------------------------------
def _svg_line(values: list, w: int = 720, h: int = 160, color: str = "#1f77b4", top=None,
              label: str = "") -> str:
    vals = [v or 0 for v in values] or [0]
    hi = top if top is not None else (max(vals) or 1)
    n = max(len(vals) - 1, 1)
    pts = " ".join(f"{i * (w - 40) / n + 30:.1f},{h - 20 - (v / hi) * (h - 40):.1f}"
                   for i, v in enumerate(vals))
    return (f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{html.escape(label)}">'
            f'<rect x="30" y="20" width="{w - 40}" height="{h - 40}" fill="#fafafa" stroke="#ccc"/>'
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'
            f'<text x="32" y="14" font-size="12">{html.escape(label)} (max {hi:,.2f})</text></svg>')


def to_html(rep: dict) -> str:
    c, t, tl = rep["capture"], rep["totals"], rep["timeline"]
    fills = [(x["count"] or 0) / x["max"] if x.get("max") else 0 for x in tl]
    from tracer.views.escape import safe

    def esc(v) -> str:           # foreign text: no markup, no control characters
        return html.escape(safe(v, newlines=True))

    def table(rows, cols):
        head = "".join(f"<th>{esc(h)}</th>" for h, _ in cols)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(r.get(k) if r.get(k) is not None else ''))}</td>"
                                         for _, k in cols) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    findings = "".join(f'<div class="f {esc(f["severity"])}"><b>{esc(f["severity"])}: {esc(f["message"])}</b>'
                       f'<p>{esc(f["evidence"])}</p><pre>{esc(f["fix"])}</pre></div>'
                       for f in rep["findings"]) or "<p>No findings.</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cttrace report: {esc(str(c['host']))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}pre{{background:#f4f4f4;padding:6px}}
.f{{border-left:4px solid #888;padding-left:8px;margin:1em 0}}.critical{{border-color:#c00}}
.warning{{border-color:#e90}}.info{{border-color:#07c}}</style></head><body>
<h1>cttrace report</h1>
<p>{esc(str(c['host']))} · kernel {esc(str(c['kernel']))} · backend {esc(str(c['backend']))} · netns {esc(str(c['netns']))}<br>
{esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c['started'])))}, {c['seconds']:.0f} s{' (truncated capture)' if c['truncated'] else ''}</p>
<p><b>inserts {t['inserts']:,} · deletes {t['deletes']:,} · table-full drops {t['table_full']:,} ·
early drops {t['early_drops']:,} · insert failures {t['insert_failed']:,} · lost events {t['lost']}</b></p>
<p><b>forecast:</b> {esc(_forecast_line(rep.get('forecast')))}</p>
<h2>Table fill</h2>{_svg_line(fills, color="#1f77b4", top=1.0, label="fill (count/max)")}
<h2>Table-full drops per second</h2>{_svg_line([x['drops'] for x in tl], color="#d62728", label="drops/s")}
<h2>Inserts per second</h2>{_svg_line([x['inserts'] for x in tl], color="#2ca02c", label="inserts/s")}
<h2>Top sources</h2>{table(rep['top_sources_by_inserts'], [('source', 'src'), ('inserts', 'inserts'), ('container', 'container')])}
{table(rep['top_sources_by_drops'], [('source', 'src'), ('drops', 'drops'), ('container', 'container')])}
<h2>Findings</h2>{findings}
</body></html>"""
