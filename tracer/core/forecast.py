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
replied, not yet assured, udp_timeout again. GRE has its own two
(nf_conntrack_proto_gre.c): gre_timeout until a reply is seen, then
gre_timeout_stream; it is not on generic_timeout.

The model assumes no entry is refreshed in the future: refreshed entries
(busy connections) stay longer, so where the table holds busy long-lived
flows the real table is fuller than the forecast. The doctor says so.
"""

from __future__ import annotations

import math
from collections import Counter
from operator import itemgetter
from typing import Annotated, NotRequired, TypedDict

from tracer.core.conntrack import F_ASSURED, F_UNREPLIED, STATE_NAMES, proto_name
from tracer.core import cuts
from tracer.core.schema import Digits, Max


# --- what summarize() returns, as a capture records it (its schema) ----------
Kind = Annotated[str, Max(64)]                 # "udp/UNREPLIED", "tcp/ESTABLISHED", ...


class Idle(TypedDict):
    timeout: int
    sysctl: Kind
    buckets: dict[Kind, int]


class ByApp(TypedDict):
    src: Annotated[str, Max(64)]
    dport: Kind
    entries: int


class Candidate(TypedDict):
    sysctl: Kind
    kinds: list[Kind]
    current: int
    proposed: int
    freed: int
    of: int
    by_app: NotRequired[list[ByApp]]
    cuts: NotRequired[cuts.Cuts]


class AgesSummary(TypedDict, total=False):
    schedule: dict[Kind, dict[Kind, int]]
    remaining: dict[Kind, dict[Digits, int]]    # kind -> {seconds left: entries}
    idle: dict[Kind, Idle]
    candidates: list[Candidate]
    assured: int
    total: int
    new_kind: Kind | None
    life: int | None
    apps: cuts.Cuts
    source_apps: Annotated[dict[Annotated[str, Max(64)], cuts.Cuts], Max(64)]


TCP_SYSCTL = {"SYN_SENT": "tcp_timeout_syn_sent", "SYN_RECV": "tcp_timeout_syn_recv",
              "ESTABLISHED": "tcp_timeout_established", "FIN_WAIT": "tcp_timeout_fin_wait",
              "CLOSE_WAIT": "tcp_timeout_close_wait", "LAST_ACK": "tcp_timeout_last_ack",
              "TIME_WAIT": "tcp_timeout_time_wait", "CLOSE": "tcp_timeout_close",
              "SYN_SENT2": "tcp_timeout_syn_sent"}
HORIZONS = (("10s", 10), ("1m", 60), ("10m", 600))
# The longest timeout a kernel can hold, in seconds: the nf_conntrack_*timeout*
# sysctls go through proc_dointvec_jiffies, which refuses a value above
# INT_MAX / HZ (kernel/sysctl.c, do_proc_dointvec_jiffies_conv), and HZ is at
# least 100: 21,474,836 s (248 days). A remaining timeout in a dump or an
# export is never longer.
MAX_TIMEOUT = (2**31 - 1) // 100
IDLE_BUCKETS = ((0, 10), (10, 60), (60, 300), (300, 3600), (3600, 86400), (86400, None))
# Shorter timeouts worth a look, per sysctl (only those below the current value are offered).
CANDIDATES = {"tcp_timeout_established": (86400, 3600), "tcp_timeout_time_wait": (30,),
              "tcp_timeout_close_wait": (30,), "udp_timeout": (10,), "udp_timeout_stream": (60,),
              "generic_timeout": (120,), "icmp_timeout": (10,)}
WHO_APPS = 10             # applications kept in the summary's "apps" (who the table holds)
WHO_SOURCES = 3           # sources whose applications are kept ("source_apps")
APPS_CAP = 200_000         # distinct (kind, remaining, source, port) kept for the per-application split
_KEY = itemgetter(0, 1, 5, 9)
_APP = itemgetter(0, 1, 5, 9, 2, 4)


def kind(proto: int, state, flags: int) -> str:
    """What sets an entry's timeout: "tcp/ESTABLISHED", "udp/UNREPLIED",
    "udp/STREAM", "udp/REPLIED", "gre/UNREPLIED", "gre/STREAM", "icmp",
    "sctp/...", or the protocol name."""
    name = proto_name(proto)
    if proto == 17 or proto == 136:
        if flags & F_UNREPLIED:
            return f"{name}/UNREPLIED"
        return f"{name}/STREAM" if flags & F_ASSURED else f"{name}/REPLIED"
    if proto == 47:                         # a reply seen: the stream timeout
        return "gre/UNREPLIED" if flags & F_UNREPLIED else "gre/STREAM"
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
    if proto == "gre":
        return "gre_timeout_stream" if st == "STREAM" else "gre_timeout"
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
                c["cuts"] = cuts.group((s, p, n) for (s, p), n in by.items())
            cand.append(c)
    # new entries live the timeout of the kind the youngest entries hold; with
    # none touched lately, of the kind most entries hold (as top and serve do)
    life_kind = young.most_common(1)[0][0] if young and young.most_common(1)[0][1] else \
        max(idle, key=lambda k: (sum(remaining[k].values()), k), default=None)
    out = {"schedule": sched, "remaining": {k: {str(t): n for t, n in sorted(d.items())}
                                            for k, d in remaining.items()},
           "idle": idle, "candidates": cand, "assured": assured, "total": total,
           "new_kind": life_kind,
           "life": idle[life_kind]["timeout"] if life_kind else None}
    if apps is not None:
        out.update(_who(apps))
    return out


def _who(apps) -> dict:
    """Whose entries the table holds, for the doctor's "who it cuts": the
    biggest applications (cuts.group) and, for the biggest sources, their
    applications."""
    pairs: Counter = Counter()
    for _, _, src, port, n in apps:
        pairs[(src, port)] += n
    per_src: Counter = Counter()
    for (src, _), n in pairs.items():
        per_src[src] += n
    top = {s for s, _ in per_src.most_common(WHO_SOURCES)}
    return {"apps": cuts.group(((s, p, n) for (s, p), n in pairs.items()), apps=WHO_APPS),
            "source_apps": {s: cuts.group((x, p, n) for (x, p), n in pairs.items() if x == s)
                            for s in sorted(top)}}


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
    first reach `limit`? Returns (seconds or None when never, the level the
    table holds once new entries are at their steady number and the present
    entries that live about as long have left: N(2 life), so entries with
    days left count, a bucket's half width beyond `life` does not). Exact
    for this model: between two expiries N grows linearly, so each segment
    is solved in closed form."""
    n0 = fixed + sum(n for _, n in existing)
    if n0 >= limit:
        return 0.0, float(n0)
    life = life if life and life > 0 else math.inf
    steady = fixed + rate * life + sum(n for t, n in existing if t > 2 * life) if life != math.inf \
        else (math.inf if rate > 0 else float(n0))
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


def from_net(count: int | None, limit: int | None, net: list[float]) -> dict:
    """Time to full from the last intervals' net rates (inserts - deletes per
    second): a straight line, the live views' model before the expiry
    schedule (`live_forecast`), kept as the baseline the tests compare with.
    Low/high from the spread of the intervals; "filling" False when the mean
    net rate is not positive."""
    if not limit or count is None or not net:
        return {"filling": None, "reason": "no limit or no interval yet"}
    lo_r, r, hi_r = rate_band(net)
    room = max(limit - count, 0)

    def eta(rate):
        return None if rate <= 0 else room / rate
    return {"filling": r > 0, "seconds": eta(r), "low": eta(hi_r), "high": eta(lo_r),
            "steady": None if r > 0 else count, "rate": r, "rate_low": lo_r, "rate_high": hi_r,
            "limit": limit, "model": "net rate of the last intervals"}


# --- the live table's expiry schedule (top, serve) ---------------------------
#
# The live table sees every dumped row with its remaining timeout, and every
# NEW event with its first timeout. A Schedule keeps, per dump, only counts:
# {(proto, state, flags, expiry bucket): entries}, the expiry counted from
# the dump's start. Buckets are 1 s wide up to 10 min, 10 s up to 1 h, 1 min
# up to 1 day, 10 min beyond: a few thousand keys per kind at most, whatever
# the table's size. Nothing is kept per entry.

SCHED_KIND_FLAGS = F_UNREPLIED | F_ASSURED
_ROW_KEY = itemgetter(0, 1, 5, 9)          # proto, state, flags, timeout (ctnetlink R_* columns)
SCHED_RAW_MAX = 50_000                      # rows' distinct keys held before they are bucketed
SCHED_FLUSH_S = 1.0                         # ... or seconds (the rows' read time is known to +-0.5 s)
SCHEDULE_SYSCTLS = tuple(sorted(set(TCP_SYSCTL.values()) | {
    "udp_timeout", "udp_timeout_stream", "icmp_timeout", "icmpv6_timeout", "generic_timeout",
    "gre_timeout", "gre_timeout_stream"}))


def bucket(s: int) -> int:
    """The start of the expiry bucket holding s seconds (s >= 0)."""
    if s < 600:
        return s
    if s < 3600:
        return s - s % 10
    if s < 86400:
        return s - s % 60
    return s - s % 600


def bucket_width(b: int) -> int:
    return 1 if b < 600 else 10 if b < 3600 else 60 if b < 86400 else 600


class Schedule:
    """The expiry schedule of the live table as of one dump (see above).

    Rows of the dump: `rows(batch, now)` (C speed) or `raw[key(row)] += 1`
    then `flush(now)`; entries the dump cannot have shown (inserted after
    it began, from events): `inserted(row, now)`. `existing(now)`: the
    sorted [(seconds left, entries)] of those still alive at `now` if no
    packet refreshes them. `sysctls`: the namespace's timeouts (short
    names), read when the dump began."""

    key = staticmethod(_ROW_KEY)

    def __init__(self, t0: float, sysctls: dict | None = None):
        self.t0 = t0                   # when the dump began (the session's clock)
        self.done: float | None = None  # when it completed
        self.sysctls = sysctls or {}
        self.counts: Counter = Counter()
        self.raw: Counter = Counter()  # rows not yet bucketed: (proto, state, flags, timeout) -> n
        self._raw_t: float | None = None   # when the first of them was read
        self._raw_last = 0.0               # ... and the last
        self.dumped = 0                # rows counted from the dump
        self.untimed = 0               # rows without a timeout (not in the schedule)
        self.inserted_n = 0            # entries added from events since the dump began
        self.new_kinds: Counter = Counter()   # (proto, state, flags) of those

    # --- filling ----------------------------------------------------------------
    def rows(self, rows, now: float) -> None:
        """A batch of dumped rows, read at `now`."""
        if self.raw and now - self._raw_t >= SCHED_FLUSH_S:
            self.flush()
        self.raw.update(map(_ROW_KEY, rows))
        self.mark(now)

    def mark(self, now: float) -> None:
        """The rows added to `raw` so far were read by `now`; bucket them
        when they span a second or are many."""
        if self._raw_t is None:
            self._raw_t = now
        self._raw_last = now
        if len(self.raw) > SCHED_RAW_MAX or now - self._raw_t >= SCHED_FLUSH_S:
            self.flush()

    def flush(self, now: float | None = None) -> None:
        """Bucket the rows read since the last flush: their remaining
        timeouts count from the middle of the span they were read in."""
        if not self.raw:
            self._raw_t = None
            return
        if self._raw_t is None:
            self._raw_t = self._raw_last = now if now is not None else self.t0
        shift = (self._raw_t + self._raw_last) / 2 - self.t0
        counts = self.counts
        for (p, s, f, t), n in self.raw.items():
            self.dumped += n
            if t is None:
                self.untimed += n
                continue
            counts[(p, s, f & SCHED_KIND_FLAGS, bucket(max(int(t + shift + 0.5), 0)))] += n
        self.raw.clear()
        self._raw_t = None

    def inserted(self, row, now: float) -> None:
        """An entry that no dumped row of this schedule shows (a NEW event,
        or an UPDATE of an entry the dump has not reached): it expires its
        event's timeout after `now`."""
        t = row[9]
        k = (row[0], row[1], row[5] & SCHED_KIND_FLAGS)
        self.inserted_n += 1
        self.new_kinds[k] += 1
        if t is not None:
            self.counts[k + (bucket(max(int(now - self.t0 + t + 0.5), 0)),)] += 1

    def inserted_rows(self, rows: list, now: float) -> None:
        """inserted() for a batch of rows (C speed but per distinct key)."""
        counts, kinds, t0 = self.counts, self.new_kinds, self.t0
        for (p, s, f, t), n in Counter(map(_ROW_KEY, rows)).items():
            k = (p, s, f & SCHED_KIND_FLAGS)
            kinds[k] += n
            self.inserted_n += n
            if t is not None:
                counts[k + (bucket(max(int(now - t0 + t + 0.5), 0)),)] += n

    def end(self, now: float) -> "Schedule":
        self.flush(now)         # rows never marked (seen() by a caller without ticks): read by now
        self.done = now
        return self

    def prune(self, now: float) -> None:
        """Forget buckets that ended (bounded memory when no dump comes)."""
        age = now - self.t0
        for k in [k for k in self.counts if k[3] + bucket_width(k[3]) < age]:
            del self.counts[k]

    # --- reading ----------------------------------------------------------------
    def existing(self, now: float) -> list[tuple[float, int]]:
        """[(seconds left at `now`, entries)], sorted: the entries the
        schedule holds that have not expired, each bucket at its middle."""
        age = now - self.t0
        acc: Counter = Counter()
        for (_, _, _, b), n in self.counts.items():
            left = b + bucket_width(b) / 2 - age
            if left > 0:
                acc[left] += n
        return sorted(acc.items())

    def expired_between(self, a: float, b: float) -> int:
        """Entries whose expiry (bucket middle) falls in (a, b] (clock times)."""
        lo, hi = a - self.t0, b - self.t0
        return sum(n for (_, _, _, x), n in self.counts.items() if lo < x + bucket_width(x) / 2 <= hi)

    def by_kind(self, now: float) -> dict:
        """{kind: {"10s": n, "1m": n, "10m": n, "total": n}} at `now`."""
        age = now - self.t0
        out: dict = {}
        for (p, s, f, b), n in self.counts.items():
            left = b + bucket_width(b) / 2 - age
            if left <= 0:
                continue
            d = out.setdefault(kind(p, s, f), {lab: 0 for lab, _ in HORIZONS} | {"total": 0})
            for lab, h in HORIZONS:
                if left <= h:
                    d[lab] += n
            d["total"] += n
        return out

    def new_kind(self) -> tuple[str | None, int | None]:
        """The kind new entries take and how long they live (its sysctl):
        the kind most entries touched within 10 s of the dump hold (as the
        doctor finds it), counting the entries inserted since; failing
        that, the kind most entries hold."""
        young: Counter = Counter()
        tmax: dict = {}
        for (p, s, f, b), n in self.counts.items():
            k = kind(p, s, f)
            if b > tmax.get(k, -1):
                tmax[k] = b
        for (p, s, f, b), n in self.counts.items():
            k = kind(p, s, f)
            T = self.sysctls.get(sysctl_of(k) or "") or tmax[k] + 1
            if T - b <= 10:
                young[k] += n
        for (p, s, f), n in self.new_kinds.items():
            young[kind(p, s, f)] += n
        if not young:                   # nothing young: the kind most entries hold
            for (p, s, f, b), n in self.counts.items():
                young[kind(p, s, f)] += n
        if not young:
            return None, None
        k = young.most_common(1)[0][0]
        return k, self.sysctls.get(sysctl_of(k) or "") or tmax.get(k, -1) + 1 or None


def live_forecast(sched: Schedule | None, now: float, count: int | None, limit: int | None,
                  band: tuple[float, float, float] | None, made: int = 0) -> dict:
    """Time to full of the live table (top, serve): the schedule aged to
    `now` (the dump's entries and those inserted since, each leaving when
    its timeout ends), new entries at the insert rate `band` (low, mean,
    high per second) living the timeout of the kind new entries take, and
    `made` entries the schedule does not know (events off: the count's
    growth), taken as inserted evenly since the dump. Keys of `forecast`,
    plus model, schedule_age_s, alive (the schedule's entries now), count,
    unexplained (count - alive - made: refreshed entries live longer,
    expired ones wait for the kernel's garbage collector, deleted ones
    left sooner), expiring (within 10 s, 1 min, 10 min), new_kind, life."""
    if sched is None or band is None:
        return {"filling": None, "reason": "no dump or no interval yet", "model": "expiry schedule"}
    existing = sched.existing(now)
    age = now - sched.t0
    alive = sum(n for _, n in existing)
    kind_, life = sched.new_kind()
    fixed = 0
    if made > 0:
        if life:
            # inserted evenly over the schedule's age: 8 slices of it
            part = made / 8
            extra = [(life - age * (i + 0.5) / 8, part) for i in range(8)]
            existing = sorted(existing + [(t, n) for t, n in extra if t > 0])
        else:
            fixed = made
    out = forecast(existing, limit, band, life, fixed)
    soon = {lab: sum(n for t, n in existing if t <= h) for lab, h in HORIZONS}
    out.update({"model": "expiry schedule", "schedule_age_s": round(age, 1), "alive": alive,
                "count": count, "made": made,
                "unexplained": None if count is None else count - alive - made,
                "expiring": soon, "new_kind": kind_})
    return out
