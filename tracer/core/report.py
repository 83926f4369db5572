"""`cttrace report`: the analysis of a capture (pure). Its renderings
(terminal, HTML) are in tracer/views/report.py; JSON is this dict."""

from __future__ import annotations

import math
from collections import Counter

from tracer.core import forecast as fc
from tracer.formats.capture import Capture, counter_deltas
from tracer.core.doctor import diagnose, table_forecast
from tracer.core.hoststate import HostState


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
    late = (end[-1].get("names") if end else None) or {}
    if isinstance(late, dict):          # names found at the end (a file from elsewhere: checked)
        for a, n in late.items():
            if isinstance(a, str) and isinstance(n, str):
                names.setdefault(a, n)
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


def _fill(s: dict):
    return s["count"] / s["max"] if s.get("count") is not None and s.get("max") else None
