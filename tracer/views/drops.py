"""Drop events as text lines and the end-of-run summary (pure: data in,
strings out; no markup, and names from the system pass through
escape.safe: no control characters reach the terminal)."""

from __future__ import annotations

import time

from tracer.core.events import REASONS, Counters, Drop
from tracer.views.escape import safe


def line(d: Drop) -> str:
    """One drop, under 80 columns for IPv4: time, where, proto, tuple, reason."""
    t = time.strftime("%H:%M:%S", time.localtime(d.ts)) + f".{int(d.ts % 1 * 1e6):06d}"
    where = safe(d.container) or str(d.netns)
    icmp = d.proto in ("icmp", "icmpv6")
    sp = f" type {d.sport}" if icmp else f":{d.sport}"
    dp = f" code {d.dport}" if icmp else f":{d.dport}"
    out = f"{t} {where:18s} {d.proto:5s} {d.src}{sp} -> {d.dst}{dp}  {d.reason}"
    if d.translated:                 # NAT had changed the packet: as it was dropped
        ts, tsp, td, tdp = d.translated
        out += f"  (as {ts}:{tsp} -> {td}:{tdp})"
    if d.dst_container:              # the destination side: who publishes dst:dport
        out += f"  to {safe(d.dst_container)}"
    return out


def interval_record(t: float, seconds: float, drops: list) -> dict:
    """The drops shown in one interval, counted: the `drops --json
    --summary` record (docs/json.md) and what interval_line prints."""
    reasons: dict = {}
    who: dict = {}
    to: dict = {}
    for d in drops:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        k = (d.container or "", d.src)
        who[k] = who.get(k, 0) + 1
        if d.dst_container:
            to[d.dst_container] = to.get(d.dst_container, 0) + 1
    top = sorted(who.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    out = {"type": "interval", "t": round(t, 3), "seconds": round(seconds, 3), "drops": len(drops),
           "by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
           "top_sources": [{"container": c or None, "src": s, "drops": n} for (c, s), n in top]}
    if to:                           # the destination side, apart from the sources
        out["top_destinations"] = [{"container": c, "drops": n}
                                   for c, n in sorted(to.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
    return out


def interval_line(r: dict) -> str:
    """'-- 03:21:41 1s: 118 table_full, 3 rule; most from ctlab-c1 198.18.1.11 (118)'."""
    t = time.strftime("%H:%M:%S", time.localtime(r["t"]))
    what = ", ".join(f"{n:,} {safe(k)}" for k, n in r["by_reason"].items()) or "no drops"
    out = f"-- {t} {r['seconds']:.0f}s: {what}"
    if r["top_sources"]:
        w = r["top_sources"][0]
        out += f"; most from {safe(w['container']) + ' ' if w['container'] else ''}{w['src']} ({w['drops']:,})"
    if r.get("top_destinations"):
        w = r["top_destinations"][0]
        out += f"; most to {safe(w['container'])} ({w['drops']:,})"
    return out


def summary(c: Counters, shown: int, netns_name=lambda inum: None, top: int = 10) -> list[str]:
    """The summary printed at the end of `cttrace drops` (to stderr)."""
    r = c.by_reason
    reasons = ", ".join(f"{r.get(k, 0)} {k}" for k in REASONS)
    events = (f"events: {c.events_sent} sent, {c.over_rate_limit} over the rate limit, "
              f"{c.lost} lost")
    out = [f"cttrace drops: {shown} shown; {sum(r.values())} dropped: {reasons}; {events}"]
    if c.conntrack is not None:        # conntrack's own probes: exact counts
        k = c.conntrack
        missed = "unknown" if c.missed is None else str(c.missed)
        out.append(f"  conntrack: {k['inserts']} inserts, {k['deletes']} deletes, "
                   f"{k['early_drops']} early drops, {k['clash_resolved']} clashes resolved"
                   + (f", {k['create_refused']} ctnetlink creates refused (no packet dropped)"
                      if k.get("create_refused") else "")
                   + (f", {k['args_missed']} returns without their call (unknown)"
                      if k.get("args_missed") else "") + "; "
                   f"missed probe runs: {missed}; probes: {', '.join(c.attached)}"
                   + (f" (not attached: {', '.join(c.not_attached)})" if c.not_attached else ""))
    for s in sorted(c.sources, key=lambda s: -s.all_drops)[:top]:
        if not s.all_drops:
            break
        kinds = ", ".join(f"{n} {k}" for k, n in (("table_full", s.table_full),
                                                   ("insert_failed", s.insert_failed),
                                                   ("rule", s.rule), ("netfilter", s.netfilter))
                          if n)
        out.append(f"  {s.all_drops:>8} from {safe(s.src) or '?':<39} netns {safe(netns_name(s.netns)) or s.netns} "
                   f"({kinds})")
    return out
