"""The doctor's findings as rich panels (pure: findings and state in,
renderable out). Every string from the system is plain Text, never markup."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from tracer.views.escape import text

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def render(findings, state) -> Group:
    fill = f"{state.count:,}/{state.max:,}" if state.count is not None and state.max else "?"
    if getattr(state, "export", ""):
        fill = f"{state.count:,}/{state.max:,}" if state.max else f"{state.count:,} entries"
        head = f"cttrace doctor: export {state.export}, table {fill}, {len(findings)} finding(s)"
    else:
        head = f"cttrace doctor: netns {state.netns}, table {fill}, {len(findings)} finding(s)"
    parts = [text(head)]
    scope = getattr(state, "max_scope", "")
    if not getattr(state, "export", "") and state.netns != "host" and scope in ("global", "global-writable"):
        parts.append(Text("limit: one global nf_conntrack_max, checked against each namespace's own count"))
    elif scope == "netns":
        parts.append(Text("limit: this namespace's own nf_conntrack_max"))
    if not findings:
        parts.append(Text("nothing to fix"))
    for f in findings:
        body = Text()
        body.append_text(text(f.message + "\n", style="bold", newlines=True))
        body.append_text(text("evidence: " + f.evidence + "\n", style="dim", newlines=True))
        if f.cuts:
            body.append_text(Text("who it cuts:\n", style="bold"))
            body.append_text(cuts_text(f.cuts))
        body.append_text(text("fix:\n" + f.fix, newlines=True))
        parts.append(Panel(body, title=text(f"{f.severity}: {f.id}"), title_align="left",
                           border_style=SEVERITY_STYLE.get(f.severity, "")))
    return Group(*parts)


def cuts_text(groups: list) -> Text:
    """One line per application, then its biggest sources (tracer/core/cuts.py)."""
    out = Text()
    for g in groups:
        srcs = g.get("sources", 0)
        head = f"  {g['app']}: {g['entries']:,} entr{'y' if g['entries'] == 1 else 'ies'} from {srcs:,} " \
               f"source{'' if srcs == 1 else 's'}"
        if g.get("prefixes") and srcs > 1:
            head += " in " + ", ".join(g["prefixes"])
        out.append_text(text(head + "\n", newlines=True))
        top = g.get("top_sources") or []
        if top:
            more = g.get("other_sources", 0)
            out.append_text(text("    " + ("most: " if srcs > 1 else "") +
                                 ", ".join(f"{t['src']} {t['entries']:,}" for t in top)
                                 + (f" and {more:,} more" if more else "") + "\n", style="dim", newlines=True))
    return out
