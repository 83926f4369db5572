"""`top`'s frame: everything the live view shows (and `top --json` prints,
docs/json.md), built from what a tracing session hands over at one moment
(LiveState). Pure: no clock, no kernel; the session reads those."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tracer.core.aggregate import OTHER, LiveTable, Rates, top_rows
from tracer.core.events import Drop

RECENT_SHOWN = 8       # latest drops in a frame


class Names(Protocol):
    def ip(self, addr: str) -> str | None: ...          # the container (or host) of an address

    def pod(self, addr: str) -> str | None: ...         # asked only for group "pod"


@dataclass
class LiveState:
    """A tracing session's data at one moment (TracingSession.live_state)."""
    ts: float                          # seconds since the epoch
    netns: int | None                  # inode of the followed namespace
    netns_name: str
    backend: str
    blind_spots: str
    count: int | None                  # the table's entries, limit and buckets (the kernel's)
    max: int | None
    buckets: int | None
    live: LiveTable                    # the live table (entries by source, ...)
    freshness: dict                    # the feed's status (docs/design.md)
    rates: Rates                       # exact counter samples: rates, totals, history
    reasons: dict                      # drops by reason in the followed namespace, since the start
    lost_events: int
    lost: dict                         # everything lost on the way (TracingSession.lost)
    recent: list[Drop]                 # latest drops, newest first
    forecast: dict
    names: Names                       # who an address is (the session's attribution)


def drops_by_who(src_drops: dict, name_of, n: int) -> dict:
    """Drops since the start by source (exact, the probes' per-source
    counts) and by container (the sources grouped by their name)."""
    by_src = sorted(src_drops.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [{"src": s, "container": name_of(s), "drops": d} for s, d in by_src if d > 0]
    groups: dict = {}
    for r in rows:
        g = groups.setdefault(r["container"] or r["src"], {"drops": 0, "sources": []})
        g["drops"] += r["drops"]
        g["sources"].append(r["src"])
    cont = [{"name": k, "drops": g["drops"], "sources": len(g["sources"])}
            for k, g in sorted(groups.items(), key=lambda kv: (-kv[1]["drops"], kv[0]))]
    return {"drops_by_source": rows[:n], "drops_by_container": cont[:n]}


def top_frame(v: LiveState, group: str, sort: str, n: int, paused: bool = False) -> dict:
    """Everything `top` shows (and `top --json` prints)."""
    r = v.rates.last
    t = r.get("table", {})
    live = v.live

    def name_of(a: str) -> str | None:
        return None if a == OTHER else v.names.ip(a)      # not an address: no lookup
    rows = top_rows(live, r, group, sort, n, name_of, v.names.pod if group == "pod" else None)
    src_rows = rows if group == "src" else top_rows(live, r, "src", "entries", n, name_of)
    tot = v.rates.totals
    reasons = {k: c for k, c in sorted(v.reasons.items(), key=lambda kv: -kv[1]) if c}
    return {
        "ts": v.ts, "netns": v.netns, "netns_name": v.netns_name,
        "backend": v.backend, "blind_spots": v.blind_spots,
        "count": v.count, "max": v.max, "buckets": v.buckets, "tracked": len(live),
        "freshness": v.freshness,
        "interval": r.get("seconds", 0.0),
        "rates": {"inserts": t.get("inserts", 0.0), "deletes": t.get("deletes", 0.0),
                  "drops": t.get("table_full", 0.0), "table_full": t.get("table_full", 0.0),
                  "early_drops": t.get("early_drop", 0.0),
                  "insert_failed": t.get("insert_failed", 0.0), "invalid": t.get("invalid", 0.0)},
        "group": group, "sort": sort, "paused": paused,
        "top": [{**x, "key": str(x["key"])} for x in rows],
        "top_sources": [{"src": x["key"], "entries": x["entries"],
                         "inserts_per_s": x["inserts_per_s"], "deletes_per_s": x["deletes_per_s"],
                         "drops_per_s": x["drops_per_s"], "drops_total": x["drops_total"],
                         "container": x["container"]}
                        for x in src_rows],
        # the destination side: DNATed entries by the address their reply
        # comes from (published ports, Services, NodePorts)
        "top_dnat_destinations": [{"dst": a, "entries": c, "container": name_of(a), "side": "destination"}
                                  for a, c in sorted(live.dnat.items(),
                                                     key=lambda kv: (-kv[1], kv[0]))[:n]],
        # exact, since the session started: the kernel's counters and the probes' maps
        "totals": {"table_full": tot["table_full"], "early_drops": tot["early_drop"],
                   "insert_failed": tot["insert_failed"],
                   "inserts": tot["inserts"], "deletes": tot["deletes"],
                   "rule": reasons.get("rule", 0), "lost_events": v.lost_events},
        # exact, since the session started: the probes' maps (docs/json.md)
        "drops_by_reason": reasons,
        **drops_by_who(v.rates.src_drops, name_of, n),
        "drops": [d.to_dict() for d in v.recent[:RECENT_SHOWN]],
        "lost": v.lost,
        "history": {"fill": list(v.rates.fill_hist), "drops": list(v.rates.table_full_hist)},
        "forecast": v.forecast,
    }
