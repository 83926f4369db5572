"""Forecast and evidence from the entries' remaining timeouts (pure, no I/O).

Every entry of a ctnetlink dump carries its remaining timeout (CTA_TIMEOUT,
seconds, rounded down by the kernel). From it:

- the expiry schedule: how many entries expire within 10 s, 1 min, 10 min
  unless a packet refreshes them, by state;
- the idle time of entries whose timeout is reset by every packet (all TCP
  states, UDP, ICMP, generic): idle = the state's timeout - what remains;
- time to full: inserts at the measured rate, each new entry living its
  state's timeout, the present entries leaving as their timeouts end
  (`time_to_full`), with a low and a high estimate from the spread of the
  insert rate;
- what a shorter timeout would free now, and whose entries those are.

Kinds of entries and the sysctl that sets their timeout (the kernel's
nf_conntrack_proto_{tcp,udp,icmp,generic}.c). UDP: an entry without a reply
has udp_timeout; once replied and ASSURED (a stream) udp_timeout_stream;
replied, not yet assured, udp_timeout again.

The model assumes no entry is refreshed in the future: refreshed entries
(busy connections) stay longer, so where the table holds busy long-lived
flows the real table is fuller than the forecast. The doctor says so.
"""

from __future__ import annotations

import math
from collections import Counter
from operator import itemgetter

from tracer.conntrack import F_ASSURED, F_UNREPLIED, STATE_NAMES, proto_name

TCP_SYSCTL = {"SYN_SENT": "tcp_timeout_syn_sent", "SYN_RECV": "tcp_timeout_syn_recv",
              "ESTABLISHED": "tcp_timeout_established", "FIN_WAIT": "tcp_timeout_fin_wait",
              "CLOSE_WAIT": "tcp_timeout_close_wait", "LAST_ACK": "tcp_timeout_last_ack",
              "TIME_WAIT": "tcp_timeout_time_wait", "CLOSE": "tcp_timeout_close",
              "SYN_SENT2": "tcp_timeout_syn_sent"}
HORIZONS = (("10s", 10), ("1m", 60), ("10m", 600))
IDLE_BUCKETS = ((0, 10), (10, 60), (60, 300), (300, 3600), (3600, 86400), (86400, None))
# Shorter timeouts worth a look, per sysctl (only those below the current value are offered).
CANDIDATES = {"tcp_timeout_established": (86400, 3600), "tcp_timeout_time_wait": (30,),
              "tcp_timeout_close_wait": (30,), "udp_timeout": (10,), "udp_timeout_stream": (60,),
              "generic_timeout": (120,), "icmp_timeout": (10,)}
APPS_CAP = 200_000         # distinct (kind, remaining, source, port) kept for the per-application split
_KEY = itemgetter(0, 1, 5, 9)
_APP = itemgetter(0, 1, 5, 9, 2, 4)


def kind(proto: int, state, flags: int) -> str:
    """What sets an entry's timeout: "tcp/ESTABLISHED", "udp/UNREPLIED",
    "udp/STREAM", "udp/REPLIED", "icmp", "sctp/...", or the protocol name."""
    name = proto_name(proto)
    if proto == 17 or proto == 136:
        if flags & F_UNREPLIED:
            return f"{name}/UNREPLIED"
        return f"{name}/STREAM" if flags & F_ASSURED else f"{name}/REPLIED"
    if state is not None and proto in STATE_NAMES:
        names = STATE_NAMES[proto]
        return f"{name}/{names[state] if state < len(names) else state}"
    return name


def sysctl_of(k: str) -> str | None:
    """The sysctl (short name, nf_conntrack_ prefix dropped) holding kind k's timeout."""
    proto, _, st = k.partition("/")
    if proto == "tcp":
        return TCP_SYSCTL.get(st)
    if proto in ("udp", "udplite"):
        return "udp_timeout_stream" if st == "STREAM" else "udp_timeout"
    if proto in ("icmp", "icmpv6"):
        return "icmpv6_timeout" if proto == "icmpv6" else "icmp_timeout"
    if proto in ("sctp", "dccp"):
        return None
    return "generic_timeout"


class Ages:
    """Collects the dump's rows (ctnetlink R_* columns) into counts:
    (proto, state, flags, remaining) and, bounded, the same with the
    source address and destination port."""

    def __init__(self) -> None:
        self.raw: Counter = Counter()
        self.apps: Counter = Counter()
        self.apps_complete = True

    def add_rows(self, rows: list) -> None:
        self.raw.update(map(_KEY, rows))
        if self.apps_complete:
            self.apps.update(map(_APP, rows))
            if len(self.apps) > APPS_CAP:
                self.apps_complete = False
                self.apps.clear()

    def summary(self, sysctls: dict, addr=None) -> dict:
        """JSON-able evidence (see `summarize`); `addr` turns raw addresses into text."""
        rem: dict = {}
        flags: Counter = Counter()
        for (p, s, f, t), n in self.raw.items():
            k = kind(p, s, f)
            if t is not None:
                d = rem.setdefault(k, {})
                d[t] = d.get(t, 0) + n
            flags[bool(f & F_ASSURED)] += n
        apps = []
        for (p, s, f, t, src, dport), n in self.apps.items():
            if t is not None:
                apps.append((kind(p, s, f), t, addr(src) if addr else src,
                             f"{proto_name(p)}/{dport}" if dport is not None else proto_name(p), n))
        return summarize(rem, sysctls, assured=flags[True], apps=apps if self.apps_complete else None)


def summarize(remaining: dict, sysctls: dict, assured: int = 0, apps=None) -> dict:
    """remaining: {kind: {seconds left: entries}}; apps: [(kind, seconds
    left, source, "proto/dport", entries)] or None. Returns:
    schedule (expiring within 10 s, 1 min, 10 min by kind), remaining (the
    histogram, JSON keys), idle (buckets by kind, for kinds with a known
    timeout), candidates (shorter timeouts: entries already gone under
    them, and by source and destination port), assured, total, life (the
    timeout of the kind new entries take, for the fill model)."""
    total = sum(sum(d.values()) for d in remaining.values())
    sched, idle, cand = {}, {}, []
    young: Counter = Counter()
    for k, d in sorted(remaining.items()):
        sched[k] = {lab: sum(n for t, n in d.items() if t <= h) for lab, h in HORIZONS}
        sched[k]["total"] = sum(d.values())
        name = sysctl_of(k)
        T = sysctls.get(name) if name else None
        if not T:
            continue
        buckets = {}
        for lo, hi in IDLE_BUCKETS:
            buckets[_label(lo, hi)] = sum(n for t, n in d.items() if lo <= T - t and (hi is None or T - t < hi))
        idle[k] = {"timeout": T, "sysctl": name, "buckets": buckets}
        young[k] = sum(n for t, n in d.items() if T - t <= 10)
    for name, values in CANDIDATES.items():
        T = sysctls.get(name)
        if not T:
            continue
        kinds = [k for k in remaining if sysctl_of(k) == name]
        if not kinds:
            continue
        for P in values:
            if P >= T:
                continue
            gone = sum(n for k in kinds for t, n in remaining[k].items() if T - t >= P)
            c = {"sysctl": name, "kinds": sorted(kinds), "current": T, "proposed": P, "freed": gone,
                 "of": sum(sum(remaining[k].values()) for k in kinds)}
            if apps is not None:
                by: Counter = Counter()
                for k, t, src, port, n in apps:
                    if k in kinds and T - t >= P:
                        by[(src, port)] += n
                c["by_app"] = [{"src": s, "dport": p, "entries": n}
                               for (s, p), n in sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
            cand.append(c)
    life_kind = young.most_common(1)[0][0] if young and young.most_common(1)[0][1] else None
    return {"schedule": sched, "remaining": {k: {str(t): n for t, n in sorted(d.items())}
                                             for k, d in remaining.items()},
            "idle": idle, "candidates": cand, "assured": assured, "total": total,
            "new_kind": life_kind,
            "life": idle[life_kind]["timeout"] if life_kind else None}


def _label(lo: int, hi: int | None) -> str:
    return f"{_dur(lo)}-{_dur(hi)}" if hi is not None else f">={_dur(lo)}"


def _dur(s: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{int(s)}s"


def flat(remaining: dict) -> list[tuple[float, int]]:
    """{kind: {seconds: n}} (ints or JSON strings) -> sorted [(seconds, n)]."""
    acc: Counter = Counter()
    for d in remaining.values():
        for t, n in d.items():
            acc[float(t)] += int(n)
    return sorted(acc.items())


def time_to_full(existing: list[tuple[float, int]], limit: int, rate: float, life: float | None,
                 fixed: int = 0) -> tuple[float | None, float]:
    """When does N(t) = fixed + #(existing with remaining > t) + rate * min(t, life)
    first reach `limit`? Returns (seconds or None when never, the steady
    level the table tends to). Exact for this model: between two expiries
    N grows linearly, so each segment is solved in closed form."""
    n0 = fixed + sum(n for _, n in existing)
    if n0 >= limit:
        return 0.0, float(n0)
    life = life if life and life > 0 else math.inf
    steady = fixed + rate * life if life != math.inf else (math.inf if rate > 0 else float(n0))
    if rate <= 0:
        return None, float(n0)
    alive = n0
    t0 = 0.0
    for t, n in existing + [(math.inf, 0)]:
        end = min(t, life)
        # on [t0, end): N(s) = alive + rate * s
        if alive + rate * end >= limit:
            s = (limit - alive) / rate
            return max(s, t0), steady
        if end >= life:
            return None, steady
        alive -= n
        t0 = t
    return None, steady


def rate_band(samples: list[float] | None, count: int | None = None,
              seconds: float | None = None) -> tuple[float, float, float]:
    """(low, mean, high) insert rate. From several intervals' rates: their
    spread (min and max); from one count over one window: the Poisson
    band, mean +- 2 sqrt(count) / seconds."""
    if samples and len(samples) >= 2:
        m = sum(samples) / len(samples)
        return min(samples), m, max(samples)
    if count is not None and seconds:
        m = count / seconds
        d = 2 * math.sqrt(count) / seconds
        return max(m - d, 0.0), m, m + d
    m = samples[0] if samples else 0.0
    return m, m, m


def forecast(existing: list[tuple[float, int]], limit: int | None, band: tuple[float, float, float],
             life: float | None, fixed: int = 0) -> dict:
    """Time to full with a low and a high estimate (from the high and the low
    insert rate); "filling" False when the table levels off below the limit."""
    if not limit:
        return {"filling": None, "reason": "no limit known"}
    lo_r, r, hi_r = band
    mid, steady = time_to_full(existing, limit, r, life, fixed)
    low, _ = time_to_full(existing, limit, hi_r, life, fixed)
    high, _ = time_to_full(existing, limit, lo_r, life, fixed)
    return {"filling": mid is not None, "seconds": mid, "low": low, "high": high,
            "steady": None if math.isinf(steady) else round(steady),
            "rate": r, "rate_low": lo_r, "rate_high": hi_r, "life": life, "limit": limit}


def text(f: dict) -> str:
    """'full in ~4m (3m-6m)', 'not filling (levels at ~12,000)' or ''."""
    if not f or f.get("filling") is None:
        return ""
    if not f["filling"]:
        lo = f.get("low")
        tail = f" (full in ~{human(lo)} at the high rate)" if lo is not None else ""
        st = f.get("steady")
        return f"not filling (levels at ~{st:,})" + tail if st is not None else "not filling" + tail
    hi = f.get("high")
    return f"full in ~{human(f['seconds'])} ({human(f['low'])}-{human(hi) if hi is not None else 'never'})"


def human(s: float | None) -> str:
    if s is None:
        return "never"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def entry_size(btf_size: int | None, slab_objsize: int | None = None) -> tuple[int | None, str]:
    """Bytes per entry and how it was found: the nf_conntrack slab's object
    size (/proc/slabinfo), else sizeof(struct nf_conn) from BTF rounded up
    to a 64-byte cache line (the cache is made with SLAB_HWCACHE_ALIGN,
    nf_conntrack_core.c). Extensions (NAT, labels, timestamps) are a
    separate kmalloc of ~100-200 bytes per entry, not counted."""
    if slab_objsize:
        return slab_objsize, "objsize of the nf_conntrack slab (/proc/slabinfo)"
    if btf_size:
        return -(-btf_size // 64) * 64, f"sizeof(struct nf_conn) = {btf_size} (BTF), rounded to 64"
    return None, "unknown"


def clean(raw) -> dict:
    """A recorded summary (a capture's) with the right shapes, else {}: the
    doctor reads it as it reads a live one."""
    def counts(d):
        return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                           and not isinstance(v, bool) for k, v in d.items())
    if not isinstance(raw, dict):
        return {}
    rem = raw.get("remaining")
    if not isinstance(rem, dict) or not all(isinstance(k, str) and counts(d) for k, d in rem.items()):
        return {}
    try:
        for d in rem.values():
            for t in d:
                float(t)
    except ValueError:
        return {}
    out = {"remaining": rem}
    for key in ("schedule", "idle"):
        v = raw.get(key)
        if isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, dict) for k, d in v.items()):
            out[key] = v
    idle = out.get("idle", {})
    if not all(isinstance(d.get("timeout"), int) and isinstance(d.get("sysctl"), str)
               and counts(d.get("buckets")) for d in idle.values()):
        out["idle"] = {}
    c = raw.get("candidates")
    if isinstance(c, list) and all(isinstance(x, dict) and isinstance(x.get("sysctl"), str)
                                   and isinstance(x.get("kinds"), list)
                                   and all(isinstance(x.get(k), int) for k in ("current", "proposed",
                                                                               "freed", "of"))
                                   for x in c):
        out["candidates"] = c
    for key in ("assured", "total", "life"):
        if isinstance(raw.get(key), int) and not isinstance(raw.get(key), bool):
            out[key] = raw[key]
    if isinstance(raw.get("new_kind"), str):
        out["new_kind"] = raw["new_kind"]
    return out


def from_net(count: int | None, limit: int | None, net: list[float]) -> dict:
    """Time to full from the last intervals' net rates (inserts - deletes per
    second), for the live views: the live table keeps no timeouts, so the
    schedule is the one the deletes show. Low/high from the spread of the
    intervals; "filling" False when the mean net rate is not positive."""
    if not limit or count is None or not net:
        return {"filling": None, "reason": "no limit or no interval yet"}
    lo_r, r, hi_r = rate_band(net)
    room = max(limit - count, 0)

    def eta(rate):
        return None if rate <= 0 else room / rate
    return {"filling": r > 0, "seconds": eta(r), "low": eta(hi_r), "high": eta(lo_r),
            "steady": None if r > 0 else count, "rate": r, "rate_low": lo_r, "rate_high": hi_r,
            "limit": limit, "model": "net rate of the last intervals"}
