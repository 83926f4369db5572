"""`cttrace report`'s renderings of core.report.analyse(): terminal (rich)
and a self-contained HTML page with SVG charts."""

from __future__ import annotations

import html
import time

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
