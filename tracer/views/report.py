"""`cttrace report`'s renderings of core.report.analyse(): terminal (rich)
and a self-contained HTML page with SVG charts."""

from __future__ import annotations

import html
import time

from tracer.views.doctor import cuts_text
from tracer.views.escape import safe, text
from tracer.views.top import sparkline


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



# -- terminal -------------------------------------------------------------------------------
def render(rep: dict):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    c, t = rep["capture"], rep["totals"]
    head = Text()
    # everything in a capture was written on another host: shown literally, never as markup
    head.append(f"{safe(c['host'])} · kernel {safe(c['kernel'])} · backend {safe(c['backend'])} · "
                f"netns {safe(c['netns'])}\n")
    head.append(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c['started']))}, {c['seconds']:.0f} s, "
                f"{c['records']:,} records" + (" (TRUNCATED)" if c["truncated"] else "") + "\n")
    for line in rep.get("summary") or []:
        head.append(safe(line) + "\n", style="bold yellow" if line is rep["summary"][0] else "")
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
    if rep.get("drops_by_destination"):      # the destination side, never mixed with the sources
        tab = Table(title=Text("drops by destination (published ports)"), title_justify="left")
        for col, just in (("container", "left"), ("drops", "right"), ("ports", "left")):
            tab.add_column(col, justify=just)
        for r in rep["drops_by_destination"]:
            tab.add_row(text(r["container"]), f"{r['drops']:,}", text(", ".join(r["ports"])))
        parts.append(tab)
    for f in rep["findings"]:            # critical first (doctor.diagnose)
        body = text(f"{f['message']}\nevidence: {f['evidence']}\n", newlines=True)
        if f.get("cuts"):
            body.append("who it cuts:\n")
            body.append_text(cuts_text(f["cuts"]))
        body.append_text(text(f"fix:\n{f['fix']}", newlines=True))
        parts.append(Panel(body, title=text(f"{f['severity']}: {f['id']}"), title_align="left"))
    return Group(*parts)


# -- HTML -------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:920px;
 color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin:0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .2em}
.meta{color:#555;margin:.2em 0 1em}
.summary{background:#fff8e6;border:1px solid #f0d080;border-radius:6px;padding:.6em 1em;font-size:1.05em}
.summary.calm{background:#eef7ee;border-color:#9c9}
.summary p{margin:.3em 0}.summary p:first-child{font-weight:600}
.numbers{display:flex;flex-wrap:wrap;gap:8px;margin:1em 0}
.numbers div{border:1px solid #ddd;border-radius:6px;padding:4px 10px;min-width:96px}
.numbers b{display:block;font-size:1.3em}.numbers span{color:#555;font-size:.85em}
.numbers .bad b{color:#c00}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f4f4f4}
pre{background:#f4f4f4;padding:6px;white-space:pre-wrap;word-break:break-all;margin:.3em 0}
.finding{border-left:5px solid #888;padding:2px 0 2px 10px;margin:.8em 0}
.finding .sev{display:inline-block;font-size:.8em;font-weight:700;text-transform:uppercase;color:#fff;
 background:#888;border-radius:3px;padding:0 5px;margin-right:6px}
.finding.critical{border-color:#c00}.finding.critical .sev{background:#c00}
.finding.warning{border-color:#e90}.finding.warning .sev{background:#d80}
.finding.info{border-color:#07c}.finding.info .sev{background:#07c}
.finding .msg{font-weight:600}.finding .id{color:#666;font-size:.85em}
.finding .ev{color:#444;margin:.2em 0}.finding ul{margin:.2em 0}
svg.chart{display:block;max-width:100%;height:auto;font-size:11px;margin:.2em 0}
svg .plot{fill:#fcfcfc;stroke:#bbb}
svg .ytick line{stroke:#e6e6e6}svg .tick line{stroke:#ddd}svg text{fill:#444}
svg .unit{fill:#222;font-weight:600}
svg .limit line{stroke:#c00;stroke-width:1.5;stroke-dasharray:6 4}svg .limit text{fill:#c00;font-weight:600}
svg .burst{fill:#d62728;fill-opacity:.10;stroke:#d62728;stroke-opacity:.5;stroke-dasharray:3 3}
svg .hover{fill:transparent}svg .hover:hover{fill:#000;fill-opacity:.06}
.legend{margin:0 0 .4em;font-size:.85em}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.note{color:#666;font-size:.9em}
.cols{display:flex;gap:24px;flex-wrap:wrap}
@media print{body{max-width:none;margin:0;font-size:10pt}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 section,svg.chart,.finding,table{break-inside:avoid}h2{break-after:avoid}
 svg .hover{display:none}}
"""


def to_html(rep: dict) -> str:
    """The report as one self-contained page: inline CSS and SVG, no script,
    nothing fetched. Every string that came from a capture is escaped."""
    from tracer.views import charts as ch
    from tracer.core.report import clock, span

    c, t, tl = rep["capture"], rep["totals"], rep["timeline"]
    t0 = c["started"]
    width = rep.get("timeline_seconds_per_point") or 1

    def esc(v) -> str:           # foreign text: no markup, no control characters
        return html.escape(safe("" if v is None else str(v), newlines=True))

    def num(v) -> str:
        return "" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"

    def table(rows, cols, css=""):
        head = "".join(f'<th class="{"n" if n else ""}">{esc(h)}</th>' for h, _, n in cols)
        body = "".join("<tr>" + "".join(
            f'<td class="n">{num(r.get(k))}</td>' if n else f"<td>{esc(r.get(k))}</td>"
            for _, k, n in cols) + "</tr>" for r in rows)
        return f'<table class="{css}"><tr>{head}</tr>{body}</table>'

    end = t0 + (tl[-1]["t"] + width if tl else c["seconds"])
    axis = ch.TimeAxis(t0, end)
    bursts = rep.get("bursts") or []
    marks = [(b["first"], b["last"], f"burst {i}: {span(b['first'], b['last'])}, "
              f"{b['drops'] + b['clash']:,} drops") for i, b in enumerate(bursts, 1)]
    pts = lambda key: [(t0 + x["t"], x.get(key)) for x in tl]  # noqa: E731
    limits = [(t0 + x["t"], x["max"]) for x in tl if x.get("max")]

    def when(x):
        return clock(t0 + x["t"]) + (f"-{clock(t0 + x['t'] + width)}" if width > 1 else "")

    fill_hover = [(t0 + x["t"], f"{when(x)}: {x['count']:,} entries" +
                   (f" of {x['max']:,} ({100 * x['count'] / x['max']:.0f}%)" if x.get("max") else ""))
                  for x in tl if x.get("count") is not None]
    charts = [
        "<h3>Table fill</h3>",
        ch.chart(axis, width, "table entries over time", "entries",
                 [{"name": "entries", "color": "#1f77b4", "kind": "line", "points": pts("count")}],
                 fill_hover, marks, limit=limits, css="fill"),
        "<h3>Conntrack drops</h3>",
        ch.legend([("#d62728", "table full"), ("#ff7f0e", "clash (insert failed)")]),
        ch.chart(axis, width, "drops per second", "drops/s" if width == 1 else f"drops per {width} s",
                 [{"name": "table_full", "color": "#d62728", "kind": "bars", "points": pts("drops")},
                  {"name": "clash", "color": "#ff7f0e", "kind": "bars", "points": pts("clash")}],
                 [(t0 + x["t"], f"{when(x)}: {x['drops']:,} table-full, {x['clash']:,} clash drops, "
                   f"{x['early_drops']:,} early drops") for x in tl], marks, height=150, css="drops"),
        "<h3>New and removed entries</h3>",
        ch.legend([("#2ca02c", "inserts"), ("#9467bd", "deletes")]),
        ch.chart(axis, width, "inserts and deletes per second",
                 "entries/s" if width == 1 else f"entries per {width} s",
                 [{"name": "inserts", "color": "#2ca02c", "kind": "line", "points": pts("inserts")},
                  {"name": "deletes", "color": "#9467bd", "kind": "line", "points": pts("deletes")}],
                 [(t0 + x["t"], f"{when(x)}: {x['inserts']:,} inserts, {x['deletes']:,} deletes")
                  for x in tl], marks, height=150, css="inserts"),
        "<h3>Entries by container or source</h3>",
    ]
    mix = rep.get("entries_by_source")
    if mix and mix.get("points"):
        keys = mix["keys"]
        colour = {k: (ch.OTHER if k == "other" else ch.PALETTE[i % len(ch.PALETTE)]) for i, k in enumerate(keys)}
        # the records are seconds apart: each sample holds until the next
        step = max(width, min((b["t"] - a["t"] for a, b in zip(mix["points"], mix["points"][1:])),
                              default=width))
        charts += [
            ch.legend([(colour[k], esc(k)) for k in keys]),
            ch.chart(axis, step, "entries by container or source", "entries",
                     [{"name": esc(k), "color": colour[k], "kind": "area",
                       "points": [(t0 + p["t"], p["by"].get(k, 0)) for p in mix["points"]]} for k in keys],
                     [(t0 + p["t"], esc(f"{clock(t0 + p['t'])}: " + ", ".join(
                         f"{k} {p['by'][k]:,}" for k in keys if p["by"].get(k)) + f" (total {p['total']:,})"))
                      for p in mix["points"]], marks, limit=limits, css="mix")]
    else:
        charts.append('<p class="note">This capture holds no entries-by-source records (captures made '
                      'by an older cttrace, or of a table too big to dump every few seconds).</p>')

    blist = "".join(
        f'<li class="burst-item"><b>Burst {i}</b>: {esc(span(b["first"], b["last"]))}, '
        f'{b["drops"]:,} table-full' + (f' and {b["clash"]:,} clash' if b["clash"] else "")
        + f' drops, peak {ch.fmt(b["peak_per_s"])}/s'
        + (f', table {b["count"]:,} of {b["max"]:,}' if b.get("count") is not None and b.get("max") else "")
        + ("; from " + ", ".join(f'{esc(s["name"])} ({s["drop_events"]:,} events)' for s in b["sources"])
           if b["sources"] else "") + "</li>" for i, b in enumerate(bursts, 1))
    bursts_html = (f"<h3>Drop bursts</h3><ol>{blist}</ol>" if blist else "")

    def cut_list(cuts):
        items = []
        for g in cuts or []:
            line = (f'{esc(g["app"])}: {g["entries"]:,} entries from {g["sources"]:,} source'
                    + ("s" if g["sources"] != 1 else ""))
            if g.get("prefixes") and g["sources"] > 1:
                line += " in " + esc(", ".join(g["prefixes"]))
            if g.get("top_sources"):
                line += " (" + ("most: " if g["sources"] > 1 else "") + esc(", ".join(
                    f'{x["src"]} {x["entries"]:,}' for x in g["top_sources"])) + ")"
            items.append(f"<li>{line}</li>")
        return f"<b>who the fix cuts:</b><ul>{''.join(items)}</ul>" if items else ""

    findings = "".join(
        f'<div class="finding {esc(f["severity"])}" data-severity="{esc(f["severity"])}">'
        f'<span class="sev">{esc(f["severity"])}</span><span class="msg">{esc(f["message"])}</span> '
        f'<span class="id">{esc(f["id"])}</span><p class="ev">{esc(f["evidence"])}</p>'
        f'{cut_list(f.get("cuts"))}<pre>{esc(f["fix"])}</pre></div>'
        for f in rep["findings"]) or "<p>No findings.</p>"

    summary = rep.get("summary") or []
    calm = not (t["table_full"] or t["insert_failed"])
    peak = max(((x["count"] or 0) / x["max"] for x in tl if x.get("max") and x.get("count") is not None),
               default=None)
    cards = [("table-full drops", t["table_full"], t["table_full"] > 0),
             ("clash drops", sum(r["kernel"] or 0 for r in rep.get("drops_by_reason", [])
                                 if r["reason"] == "insert_failed"), False),
             ("early drops", t["early_drops"], t["early_drops"] > 0),
             ("inserts", t["inserts"], False), ("deletes", t["deletes"], False),
             ("peak fill", f"{100 * peak:.0f}%" if peak is not None else "?", (peak or 0) >= 0.9),
             ("lost events", t["lost"], t["lost"] > 0)]
    numbers = "".join(f'<div class="{"bad" if bad and v else ""}"><b>{v if isinstance(v, str) else f"{v:,}"}'
                      f"</b><span>{k}</span></div>" for k, v, bad in cards)
    reasons = table(rep.get("drops_by_reason", []), [("reason", "reason", False),
                                                    ("kernel counter (exact)", "kernel", True),
                                                    ("drop events recorded", "events", True)])
    by_ct = [{**r, "sources": ", ".join(r["sources"]),
              "events": ", ".join(f"{k} {v:,}" for k, v in r["events_by_reason"].items())}
             for r in rep.get("drops_by_container", [])]
    containers = table(by_ct, [("container or source", "name", False), ("drops", "drops", True),
                               ("addresses", "sources", False), ("drop events by reason", "events", False)])
    by_dst = [{**r, "ports": ", ".join(r["ports"])} for r in rep.get("drops_by_destination", [])]
    dests = ("<h2>Drops by destination (published ports)</h2>" + table(
        by_dst, [("container", "container", False), ("drops", "drops", True), ("ports", "ports", False)])
        if by_dst else "")
    zone = esc(axis.zone())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>cttrace report: {esc(c['host'])} {esc(clock(t0))}</title><style>{CSS}</style></head><body>
<header><h1>cttrace report: {esc(c['host'])}</h1>
<p class="meta">{esc(time.strftime('%Y-%m-%d', time.localtime(t0)))} {esc(clock(t0))} to {esc(clock(end))} {zone}
({c['seconds']:,.0f} s{', truncated capture' if c['truncated'] else ''}) · kernel {esc(c['kernel'])} ·
backend {esc(c['backend'])} · netns {esc(c['netns'])} · {c['records']:,} records</p></header>
<section class="summary{' calm' if calm else ''}" id="summary">{''.join(f'<p>{esc(x)}</p>' for x in summary)}</section>
<section class="numbers" id="numbers">{numbers}</section>
<section id="findings"><h2>Findings, most severe first</h2>{findings}</section>
<section id="timeline"><h2>Timeline</h2>
<p class="note">One point per {width} s; hover over a chart for its values. Red bands: drop bursts.</p>
{''.join(charts)}{bursts_html}</section>
<section id="drops"><h2>Drops by reason</h2>{reasons}
<h2>Drops by container</h2>{containers if by_ct else '<p>No drops.</p>'}{dests}</section>
<section id="sources"><h2>Top sources</h2><div class="cols">
<div><h3>by new entries</h3>{table(rep['top_sources_by_inserts'], [('source', 'src', False), ('inserts', 'inserts', True), ('container', 'container', False)])}</div>
<div><h3>by drops</h3>{table(rep['top_sources_by_drops'], [('source', 'src', False), ('drops', 'drops', True), ('container', 'container', False)])}</div>
</div></section>
<section id="forecast"><h2>Forecast</h2><p>{esc(_forecast_line(rep.get('forecast')))}</p></section>
</body></html>"""
