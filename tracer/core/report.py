"""`cttrace report`: the analysis of a capture (pure). Its renderings
(terminal, HTML) are in tracer/views/report.py; JSON is this dict."""

from __future__ import annotations

import math
import time
from collections import Counter

from tracer.core import counters
from tracer.core import forecast as fc
from tracer.formats.capture import Capture, counter_deltas
from tracer.core.doctor import SEVERITIES, diagnose, table_forecast
from tracer.core.events import TABLE_FULL
from tracer.core.hoststate import HostState


MAX_POINTS = 3600
BURST_GAP = 2          # seconds without a drop that end a drop burst
MAX_BURSTS = 10        # bursts named in a report (the biggest; listed in time order)


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
    fills = [s["count"] / s["max"] for s in stats if s.get("count") is not None and s.get("max")]
    if any(r.get("reason") == TABLE_FULL for r in cap.of("drop")):
        # The kernel refuses a new entry as table-full only with the count at
        # its limit: a burst that began and ended between two samples (the
        # limit lowered for a moment, entries evicted or expired before the
        # next sample) still had the table full.
        fills.append(1.0)
    h.peak_fill = max(fills, default=None)
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
    tl = [{"t": i * width, "count": None, "max": None, "drops": 0, "inserts": 0, "deletes": 0,
           "clash": 0, "early_drops": 0} for i in range(n)]

    def bucket(t: float) -> int | None:
        i = int((t - t0) // width)
        return i if 0 <= i < n else None

    prev = None
    latest: dict[int, tuple] = {}     # point -> its last sample's (count, max): carried forward
    for s in stats:
        i = bucket(s["t"])
        f = _fill(s)
        if tl[i]["count"] is None or (f is not None and f >= (_fill(tl[i]) or 0.0)):
            # several samples in a point (a wide point, or a burst's extra
            # sample): the fullest, which is what a fill chart is read for
            tl[i]["count"], tl[i]["max"] = s.get("count"), s.get("max")
        if s.get("count") is not None:
            latest[i] = (s.get("count"), s.get("max"))
        if prev is not None:     # the interval's table-full drops, at its middle
            j = bucket((prev["t"] + s["t"]) / 2)
            d = counters.deltas(prev["kernel"], s["kernel"])
            x = tl[j if j is not None else i]
            x["drops"] += int(counters.table_full_drops(d))
            x["clash"] += int(counters.clash_drops(d))
            x["early_drops"] += int(d.get("early_drop", 0))
        prev = s
    last = None
    for i, x in enumerate(tl):   # samples every interval > 1 s: carry the last sample forward
        if x["count"] is None and last is not None:
            x["count"], x["max"] = last
        elif x["count"] is not None:
            last = latest.get(i, (x["count"], x["max"]))
    for recs, key in ((ins, "inserts"), (dels, "deletes")):
        for r in recs:
            i = bucket(r["t"])
            if i is not None:
                tl[i][key] += 1
    by_src_ins = Counter(r["src"] for r in ins)
    names = {r["src"]: r.get("container") for r in ins + drops if r.get("container")}
    end = cap.of("end")
    late = (end[-1].get("names") if end else None) or {}
    for addr, name in late.items():     # names found at the end (typed by the capture's schema)
        names.setdefault(addr, name)
    exact = (end[-1].get("sources") if end else None) or {}
    drop_src = Counter(exact) if exact else Counter(r["src"] for r in drops)
    bursts = sorted((x for x in tl if x["drops"]), key=lambda x: -x["drops"])[:5]
    state = capture_state(cap)
    start_state = cap.header.get("state") or {}
    lost = int(sum(r.get("n", 1) for r in cap.of("lost")))
    findings = [f.to_dict() for f in diagnose(state)]
    totals = {"inserts": len(ins), "deletes": len(dels), "drops": delta("drop"),
              "table_full": int(counters.table_full_drops(deltas)),
              "drop_events": len(drops), "early_drops": delta("early_drop"),
              "insert_failed": delta("insert_failed"), "lost": lost,
              "drop_events_by_reason": dict(Counter(r.get("reason", "") for r in drops))}
    runs = drop_bursts(tl, drops, t0, width)
    by_container = drops_by_container(drop_src, drops, names)
    return {
        "capture": {"host": cap.header.get("host"), "kernel": cap.header.get("kernel"),
                    "backend": cap.header.get("backend"), "netns": cap.header.get("netns"),
                    "started": t0, "seconds": round(t1 - t0, 3), "records": len(cap.records),
                    "truncated": cap.truncated, "bad_records": cap.bad_records},
        # drops: the kernel's `drop` (every packet conntrack dropped); table_full
        # is it less the clash drops (tracer/core/counters.py)
        "totals": totals,
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
        "findings": findings,
        # added with the time-axis report (docs/json.md)
        "summary": summary(totals, deltas, runs, by_container, tl, t0, findings,
                           top_inserter=(by_src_ins.most_common(1) or [None])[0], names=names),
        "bursts": runs,
        "drops_by_reason": drops_by_reason(deltas, drops),
        "drops_by_container": by_container,
        "drops_by_destination": drops_by_destination(drops),
        "entries_by_source": entries_by_source(cap.of("entries"), t0, width, n),
    }


def _fill(s: dict):
    return s["count"] / s["max"] if s.get("count") is not None and s.get("max") else None


def drop_bursts(tl: list, drops: list, t0: float, width: int) -> list[dict]:
    """Runs of timeline points with conntrack drops (table full or clash),
    split by BURST_GAP seconds without one. Each: first and last drop (the
    drop events' times where recorded, else the points'), drops (the
    kernel's, exact), peak rate per second, the main sources (drop events
    in the burst, by container or address) and the table's fill then."""
    runs, cur = [], None
    for i, x in enumerate(tl):
        if x["drops"] + x["clash"] > 0:
            if cur is not None and i - cur[1] <= max(1, BURST_GAP // width):
                cur[1] = i
            else:
                cur = [i, i]
                runs.append(cur)
    out = []
    for a, b in runs:
        pts = tl[a:b + 1]
        lo, hi = t0 + tl[a]["t"], t0 + tl[b]["t"] + width
        # the kernel counts an interval's drops at its middle: events may lie half an interval out
        ev = [d for d in drops if lo - width <= d["t"] < hi + width]
        who = Counter(d.get("container") or d["src"] for d in ev)
        # the samples around the burst (one before: the limit may change within an interval)
        full = [x for x in tl[max(a - 1, 0):b + 1] if x.get("count") is not None and x.get("max")]
        peak_fill = max(full, key=lambda x: x["count"] / x["max"]) if full else None
        out.append({"first": min((d["t"] for d in ev), default=lo),
                    "last": max((d["t"] for d in ev), default=hi),
                    "drops": sum(x["drops"] for x in pts), "clash": sum(x["clash"] for x in pts),
                    "peak_per_s": round(max(x["drops"] + x["clash"] for x in pts) / width, 3),
                    "drop_events": len(ev),
                    "reasons": dict(Counter(d.get("reason", "") for d in ev).most_common()),
                    "sources": [{"name": k, "drop_events": v} for k, v in who.most_common(3)],
                    "count": peak_fill["count"] if peak_fill else None,
                    "max": min(x["max"] for x in full) if full else None})
    big = sorted(out, key=lambda x: -(x["drops"] + x["clash"]))[:MAX_BURSTS]
    return sorted(big, key=lambda x: x["first"])


def drops_by_reason(deltas: dict, drops: list) -> list[dict]:
    """Drops over the capture by reason: the kernel's counters (exact)
    beside the drop events recorded (the probes' detail, possibly sampled)."""
    ev = Counter(d.get("reason", "") for d in drops)
    clash = int(counters.clash_drops(deltas))
    kernel = {"table_full": int(counters.table_full_drops(deltas)), "insert_failed": clash,
              "early_drop": int(deltas.get("early_drop", 0)), "invalid": None, "rule": None}
    rows = [{"reason": r, "kernel": k, "events": ev.pop(r, 0)} for r, k in kernel.items()]
    rows += [{"reason": r, "kernel": None, "events": n} for r, n in sorted(ev.items())]
    return [r for r in rows if r["kernel"] or r["events"]]


def drops_by_container(exact: Counter, drops: list, names: dict) -> list[dict]:
    """Drops by container (or source address where none is known): the
    per-source counts (exact from the probes' maps where the capture has
    them), with each one's addresses and its drop events by reason."""
    groups: dict = {}
    for src, n in exact.items():
        g = groups.setdefault(names.get(src) or src, {"drops": 0, "sources": set(), "reasons": Counter()})
        g["drops"] += n
        g["sources"].add(src)
    for d in drops:
        g = groups.setdefault(names.get(d["src"]) or d["src"],
                              {"drops": 0, "sources": set(), "reasons": Counter()})
        g["reasons"][d.get("reason", "")] += 1
        g["sources"].add(d["src"])
    rows = [{"name": k, "container": k if k not in g["sources"] else None, "drops": g["drops"],
             "sources": sorted(g["sources"])[:10], "events_by_reason": dict(g["reasons"].most_common())}
            for k, g in groups.items()]
    return sorted(rows, key=lambda r: (-r["drops"], -sum(r["events_by_reason"].values()), r["name"]))


def drops_by_destination(drops: list, top: int = 20) -> list[dict]:
    """Drop events by their destination side (the container publishing the
    port they were sent to, or the one DNAT had sent them to), apart from
    the sources: [{container, drops, ports, events_by_reason}]."""
    groups: dict = {}
    for d in drops:
        n = d.get("dst_container")
        if not n:
            continue
        g = groups.setdefault(n, {"drops": 0, "ports": Counter(), "reasons": Counter()})
        g["drops"] += 1
        if d.get("dport") is not None:
            g["ports"][f"{d.get('proto') or '?'}/{d['dport']}"] += 1
        g["reasons"][d.get("reason", "")] += 1
    rows = [{"container": k, "drops": g["drops"], "ports": [p for p, _ in g["ports"].most_common(10)],
             "events_by_reason": dict(g["reasons"].most_common())} for k, g in groups.items()]
    return sorted(rows, key=lambda r: (-r["drops"], r["container"]))[:top]


def entries_by_source(recs: list, t0: float, width: int, n: int) -> dict | None:
    """The table's entries by container/source over time, from the
    capture's entries records (revision 2; None for older captures): the
    keys (biggest first, "other" last) and one point per timeline point
    that has a record (its last)."""
    if not recs:
        return None
    pts: dict = {}
    for r in recs:
        i = int((r["t"] - t0) // width)
        if 0 <= i < max(n, 1):
            pts[i] = r
    peak: Counter = Counter()
    for r in pts.values():
        for k, v in r["by"].items():
            peak[k] = max(peak[k], v)
    keys = sorted((k for k in peak if k != "other"), key=lambda k: (-peak[k], k))
    if "other" in peak:
        keys.append("other")
    return {"keys": keys,
            "points": [{"t": round(r["t"] - t0, 3), "total": r.get("total", sum(r["by"].values())),
                        "by": {k: r["by"].get(k, 0) for k in keys}} for _, r in sorted(pts.items())]}


def clock(t: float, seconds: bool = True) -> str:
    """HH:MM:SS (or HH:MM) of an epoch time, in this machine's time zone."""
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.localtime(t))


def span(a: float, b: float) -> str:
    """'between 01:27:58 and 01:27:59'; within two seconds, to the tenth:
    'between 01:27:58.1 and 01:27:58.6'."""
    if b - a < 2:
        f = lambda t: clock(t) + f".{int((t % 1) * 10)}"  # noqa: E731
        return f"between {f(a)} and {f(b)}"
    return f"between {clock(a)} and {clock(b)}"


def summary(totals: dict, deltas: dict, bursts: list, by_container: list, tl: list, t0: float,
            findings: list, top_inserter=None, names: dict | None = None) -> list[str]:
    """What happened, in plain words: a few sentences, the drops first."""
    out = []
    tf, clash = totals["table_full"], int(counters.clash_drops(deltas))
    total = sum(r["drops"] for r in by_container) or 0
    if tf or clash:
        what = " and ".join(x for x in (f"{tf:,} table-full drop{'s' * (tf != 1)}" if tf else "",
                                        f"{clash:,} clash drop{'s' * (clash != 1)} (insert failures)"
                                        if clash else "") if x)
        who = ""
        if by_container and total:
            top = by_container[0]
            if top["drops"] >= 0.8 * total:
                who = f" from {top['name']}"
            else:
                who = (f" from {len(by_container):,} sources, most from {top['name']} "
                       f"({top['drops']:,})")
        when = ""
        if bursts:
            a, b = bursts[0]["first"], bursts[-1]["last"]
            when = f" {span(a, b)}"
            if len(bursts) > 1:
                when += f" in {len(bursts)} bursts"
        fill = ""
        full = [x for x in bursts if x.get("count") is not None and x.get("max")]
        if full:
            x = max(full, key=lambda x: x["count"] / x["max"])
            # the kernel refuses a new entry for a full table only at its limit: with
            # table-full drops and the sampled count near it, the table was there
            at = x["count"] >= x["max"] - max(1, x["max"] // 200) or (x["drops"] and x["count"] >= x["max"] / 2)
            fill = (f", table at its limit of {x['max']:,}" if at
                    else f", table {100 * x['count'] / x['max']:.0f}% full ({x['count']:,} of {x['max']:,})")
        out.append(f"{what}{who}{when}{fill}.")
    else:
        last = next((x for x in reversed(tl) if x.get("count") is not None), None)
        fill = (f"; the table held {last['count']:,} of {last['max']:,} entries at the end "
                f"({100 * last['count'] / last['max']:.0f}%)" if last and last.get("max") else "")
        secs = tl[-1]["t"] if tl else 0
        out.append(f"No conntrack drops in {secs:,.0f} s{fill}.")
    if totals["early_drops"]:
        out.append(f"{totals['early_drops']:,} entries were evicted to make room (early drop).")
    if top_inserter and totals["inserts"]:
        src, n = top_inserter
        name = (names or {}).get(src)
        out.append(f"Most new entries came from {name + ' (' + src + ')' if name else src}: "
                   f"{n:,} of {totals['inserts']:,}.")
    if totals["lost"]:
        out.append(f"{totals['lost']:,} event batches were lost: detail is incomplete, counts are exact.")
    sev = Counter(f["severity"] for f in findings)
    if findings:
        out.append("Findings: " + ", ".join(f"{sev[s]} {s}" for s in SEVERITIES if sev[s]) + ".")
    return out
