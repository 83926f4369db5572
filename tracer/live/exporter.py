"""`cttrace serve`: a Prometheus exporter on the backend chosen at run time.

A user of the tracing session (tracer/live/session.py), like `top`: the
session pumps drop and table events; this module adds the
bounded-cardinality bookkeeping and the collector. As node_exporter does,
the table's state and the kernel's counters are read when Prometheus
scrapes, by the scrape's thread and without the pump loop's lock: under it a
scrape only copies what the pump keeps (live counts, per-source series, the
probes' counters of the last sample, at most --interval old). Every metric
family is one small function in FAMILIES (a declared table: add a family, or
a label, there); every label value passes through `label_value`.
The HTTP side is tracer/live/httpd.py (bounded threads, deadlines).

Cardinality: at most K sources get series of their own ("sticky": a source
keeps its series while it is active); every other source is summed into
source="other". A labelled source idle for `idle` seconds gives its slot up,
and its counts move into "other"'s base, so every counter stays monotonic.
Sources that are neither labelled nor holding entries are folded the same
way every minute, so memory stays bounded while sources come and go.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tracer.live.httpd import MetricsServer
from tracer.live.session import PUMP_S

METRICS = ("inserts", "deletes", "drops")
LABEL_MAX = 256          # characters of a label value (names come from other people's files)


class DestinationDrops:
    """Drop events by destination side (the container publishing the port
    they were sent to: session.Drop.dst_container), at most K labelled
    (container, proto/port) pairs; the others count in destination="other".
    From the events: drops over --rate are not among them
    (cttrace_events_lost_total{kind="over_rate_limit"} says how many)."""

    def __init__(self, k: int = 20):
        self.k = k
        self.counts: dict[tuple[str, str], int] = {}
        self.other = 0

    def add(self, drops) -> None:
        for d in drops:
            if not d.dst_container:
                continue
            key = (f"{d.proto}/{d.dport}", d.dst_container)
            if key in self.counts or len(self.counts) < self.k:
                self.counts[key] = self.counts.get(key, 0) + 1
            else:
                self.other += 1


class SourceSeries:
    """Per-source cumulative counters with at most K labelled sources.

    other = other_base + (everything of unlabelled sources) + (what labelled
    sources had before they got their label); a labelled series counts from
    its label on. Folding a source (eviction, pruning) moves all it had into
    other_base: every series stays monotonic."""

    def __init__(self, k: int = 20, idle: float = 600.0):
        self.k = k
        self.idle = idle
        self.labelled: dict[str, float] = {}            # src -> last activity
        self.offset: dict[str, dict[str, int]] = {}     # src -> its counts when labelled
        self.other_base = {m: 0 for m in METRICS}
        self.last: dict[str, dict[str, int]] = {}       # src -> latest cumulative counts

    def update(self, now: float, values: dict[str, dict[str, int]], live: dict[str, int]) -> list[str]:
        """values: src -> {metric: cumulative}; live: src -> entries now.
        Returns the labelled sources idle for `idle` seconds and without
        entries: the caller folds them (fold) and forgets their counts, or
        they would come back counted twice."""
        for src, vals in values.items():
            before = self.last.get(src, {})
            if vals != before:
                if src in self.labelled:
                    self.labelled[src] = now
                elif len(self.labelled) < self.k:
                    self.labelled[src] = now
                    self.offset[src] = dict(before)
            self.last[src] = vals
        return [src for src, t in self.labelled.items() if now - t > self.idle and not live.get(src)]

    def fold(self, src: str, drops: int | None = None) -> None:
        """Move a source's counts into other_base; `drops`: its drops read
        later than the last update (when its BPF entries were deleted)."""
        vals = self.last.pop(src, {})
        if drops is not None and drops > vals.get("drops", 0):
            vals = dict(vals, drops=drops)
        for m in METRICS:
            self.other_base[m] += vals.get(m, 0)
        self.labelled.pop(src, None)
        self.offset.pop(src, None)

    def prunable(self, live: dict[str, int]) -> list[str]:
        """Unlabelled sources without entries: fold them to bound memory."""
        return [s for s in self.last if s not in self.labelled and not live.get(s)]

    def series(self, metric: str) -> dict[str, int]:
        out = {}
        other = self.other_base[metric]
        for src, vals in self.last.items():
            if src in self.labelled:
                base = self.offset[src].get(metric, 0)
                out[src] = vals.get(metric, 0) - base
                other += base
            else:
                other += vals.get(metric, 0)
        out["other"] = other
        return out


def label_value(v) -> str:
    """Every label value, made safe for the exposition: at most LABEL_MAX
    characters, and text UTF-8 cannot carry (a lone surrogate from a name
    that was not UTF-8) escaped, so that no name fails a scrape."""
    v = "" if v is None else str(v)
    if len(v) > LABEL_MAX:
        v = v[:LABEL_MAX - 1] + "…"
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        v = v.encode("utf-8", "backslashreplace").decode("utf-8")
    return v


@dataclass
class Snapshot:
    """What one scrape shows: read from the kernel by the scrape, or copied
    from the pump loop's state under its lock."""
    table: object            # stats.TableState, read by the scrape
    kernel: dict             # summed per-CPU stats (session.kernel_totals)
    reasons: dict            # drops by reason in the followed namespace (last sample)
    lost: dict
    live: dict               # src -> live entries
    series: dict             # metric -> {src or "other": cumulative}
    sampled: float           # monotonic time of the last sample
    forecast: dict
    sched_age: float | None
    backend: str
    kernel_release: str
    netns: int | None
    who: Callable            # address -> (container, namespace, pod) labels (attribution)
    dnat: list               # [(reply source address, DNATed entries)], top K
    dnat_other: int          # DNATed entries of the other addresses
    dst_drops: dict = field(default_factory=dict)   # {(proto/port, container): drops} (DestinationDrops)
    dst_drops_other: int = 0
    labels: Callable = lambda name: (name or "", "", "")   # a name -> container, namespace, pod (_labels)
    dumps: dict = field(default_factory=dict)       # reconcile dumps completed, by reason (source.DUMP_REASONS)
    dump_seconds: float = 0.0                       # ... the time spent on them


@dataclass
class Family:
    name: str
    kind: str                # "gauge" or "counter"
    help: str
    labels: tuple
    values: Callable[[Snapshot], Iterable[tuple[tuple, float]]]


FAMILIES: list[Family] = []


def family(name: str, kind: str, help_: str, labels: tuple = ()):
    """Declare a metric family: the function yields (label values, value)."""
    def add(fn):
        FAMILIES.append(Family(name, kind, help_, labels, fn))
        return fn
    return add


@family("cttrace_conntrack_entries", "gauge", "Entries in the conntrack table (as node_nf_conntrack_entries)")
def _entries(s: Snapshot):
    yield (), s.table.count or 0


@family("cttrace_conntrack_entries_limit", "gauge", "nf_conntrack_max (as node_nf_conntrack_entries_limit)")
def _limit(s: Snapshot):
    yield (), s.table.max or 0


@family("cttrace_conntrack_buckets", "gauge", "Hash table buckets (nf_conntrack_buckets)")
def _buckets(s: Snapshot):
    yield (), s.table.buckets or 0


def _to_full(key: str):
    # +Inf when not filling (an alert `< 3600` stays quiet), NaN before the
    # first interval or without a limit (unknown, not "never")
    def values(s: Snapshot):
        fc = s.forecast
        v = fc.get(key)
        yield (), float("nan") if fc["filling"] is None else float("inf") if v is None else v
    return values


family("cttrace_conntrack_seconds_to_full", "gauge",
       "Seconds until the table is full: the entries' expiry schedule from the last dump, new entries "
       "at the last intervals' insert rate living their kind's timeout; +Inf when not filling, NaN when "
       "unknown")(_to_full("seconds"))
family("cttrace_conntrack_seconds_to_full_low", "gauge",
       "Time to full at the high end of the insert rate band (+Inf: never)")(_to_full("low"))
family("cttrace_conntrack_seconds_to_full_high", "gauge",
       "Time to full at the low end of the insert rate band (+Inf: never)")(_to_full("high"))


@family("cttrace_conntrack_forecast_schedule_age_seconds", "gauge",
        "Age of the expiry schedule the forecast ages (the last dump's start)")
def _sched_age(s: Snapshot):
    if s.sched_age is not None:             # absent until the first dump is in
        yield (), round(s.sched_age, 1)


@family("cttrace_conntrack_stat", "counter", "The kernel's per-CPU conntrack counters, summed "
        "(/proc/net/stat/nf_conntrack)", ("stat",))
def _stat(s: Snapshot):
    for k, v in sorted(s.kernel.items()):
        if k != "table_full":
            yield (k,), v


@family("cttrace_conntrack_drops", "counter",
        "Packets dropped by netfilter in this namespace, by reason: table_full (conntrack refused a new "
        "entry; the kernel's drop less its insert_failed), insert_failed (a clash at confirm: NAT port "
        "exhaustion, the UDP DNS race), both since boot; invalid, rule, unknown: since cttrace started",
        ("reason",))
def _drops(s: Snapshot):
    yield ("table_full",), s.kernel.get("table_full", 0)
    yield ("insert_failed",), s.kernel.get("insert_failed", 0)
    for r in ("invalid", "rule", "unknown"):
        yield (r,), s.reasons.get(r, 0)


@family("cttrace_conntrack_early_drops", "counter",
        "Entries evicted to make room in a full table (the kernel's early_drop; not a packet drop)")
def _early(s: Snapshot):
    yield (), s.kernel.get("early_drop", 0)


def _labels(names) -> Callable[[str | None], tuple]:
    """container, namespace, pod labels of a name attribution gave
    (Kubernetes conventions: a pod's container has its pod and namespace)."""
    def labels(n: str | None) -> tuple:
        m = names.meta(n) if n else {}
        if m.get("pod"):
            return (m.get("container", n), m["namespace"], m["pod"])
        return (n or "", "", "")
    return labels


def _who(names) -> Callable[[str], tuple]:
    """The labels of an address's owner ("other": none)."""
    labels = _labels(names)
    return lambda src: ("", "", "") if src == "other" else labels(names.ip(src))


WHO = ("container", "namespace", "pod")


def _per_source(metric: str):
    def values(s: Snapshot):
        for src, v in sorted(s.series[metric].items()):
            yield (src, *s.who(src)), v
    return values


for _m, _help in (("inserts", "Entries created"), ("deletes", "Entries deleted"),
                  ("drops", "Packets dropped by netfilter")):
    family(f"cttrace_source_{_m}", "counter", f"{_help}, by original source (top K by activity, the rest "
           "in source=\"other\")", ("source", *WHO))(_per_source(_m))


@family("cttrace_source_entries", "gauge", "Live entries by original source (labelled sources; the rest "
        "in source=\"other\")", ("source", *WHO))
def _source_entries(s: Snapshot):
    labelled = set(s.series["inserts"]) - {"other"}
    other = 0
    for src, n in s.live.items():
        if src in labelled:
            yield (src, *s.who(src)), n
        else:
            other += n
    yield ("other", "", "", ""), other


@family("cttrace_destination_entries", "gauge", "Live DNATed entries by the address their replies come "
        "from: the destination side of published ports, Services and NodePorts (top K; the rest in "
        "destination=\"other\")", ("destination", *WHO))
def _destination_entries(s: Snapshot):
    for dst, n in s.dnat:
        yield (dst, *s.who(dst)), n
    yield ("other", "", "", ""), s.dnat_other


@family("cttrace_destination_drops", "counter", "Drop events by destination side: the container "
        "publishing the port they were sent to (top K; the rest in destination=\"other\")",
        ("destination", *WHO))
def _destination_drops(s: Snapshot):
    if not s.dst_drops and not s.dst_drops_other:
        return
    for (port, name), n in sorted(s.dst_drops.items()):
        yield (port, *s.labels(name)), n
    yield ("other", "", "", ""), s.dst_drops_other


@family("cttrace_events_lost", "counter", "Events lost on their way to cttrace (counts stay exact)", ("kind",))
def _lost(s: Snapshot):
    yield ("perf",), s.lost["events"]
    yield ("netlink_overrun",), s.lost.get("netlink_overruns", 0)
    yield ("over_rate_limit",), s.lost["over_rate_limit"]
    yield ("bpf_map_full",), s.lost["bpf_map_full"]


@family("cttrace_table_reconciles", "counter", "Reconcile dumps of the table completed, by reason: "
        "events_lost, events_off, legacy, events_unknown, schedule_refresh (each costs about 4 s per "
        "million entries)", ("reason",))
def _reconciles(s: Snapshot):
    for why, n in sorted(s.dumps.items()):
        yield (why,), n


@family("cttrace_table_reconcile_seconds", "counter", "Seconds spent reading the completed reconcile dumps "
        "(their share of the exporter's CPU)")
def _reconcile_seconds(s: Snapshot):
    yield (), round(s.dump_seconds, 3)


@family("cttrace_info", "gauge", "Backend and kernel", ("backend", "kernel", "netns"))
def _info(s: Snapshot):
    yield (s.backend, s.kernel_release, str(s.netns)), 1


@family("cttrace_last_sample_age_seconds", "gauge", "Seconds since the pump loop last sampled the probes' "
        "per-source counters (a stuck loop shows here)")
def _sample_age(s: Snapshot):
    yield (), max(time.monotonic() - s.sampled, 0)


def metric_family(f: Family, snap: Snapshot):
    """The prometheus_client family of a declared one, label values made safe."""
    cls = GaugeMetricFamily if f.kind == "gauge" else CounterMetricFamily
    fam = cls(f.name, f.help, labels=list(f.labels)) if f.labels else cls(f.name, f.help)
    for labels, value in f.values(snap):
        fam.add_metric([label_value(v) for v in labels], value)
    return fam


class Collector:
    """prometheus_client collector: reads the kernel (the table's state and
    per-CPU stats) in the scrape's thread, and copies the pump loop's state
    (live counts, series, the last sample's counters, the forecast) under
    its lock: no kernel read there."""

    def __init__(self, session, series: SourceSeries, lock: threading.Lock, kernel_release: str,
                 dst_drops: DestinationDrops | None = None):
        self.session = session
        self.series = series
        self.dst_drops = dst_drops or DestinationDrops(series.k)
        self.lock = lock
        self.kernel = kernel_release

    def snapshot(self) -> Snapshot:
        s = self.session
        st = s.read_table()                     # the kernel: not under the pump's lock
        kernel = s.kernel_totals(st)
        c = s.counters or s.backend.counters()  # the last sample's (read before the first)
        with self.lock:                         # copies and arithmetic only
            entries = s.feed.entries
            sched = entries.sched
            dn = entries.dnat
            dnat = sorted(dn.items(), key=lambda kv: (-kv[1], kv[0]))[:self.series.k]
            return Snapshot(
                table=st, kernel=kernel, reasons=dict(c.reasons_by_netns.get(s.inum, {})),
                lost=s.lost(), live=dict(entries.by["src"]),
                series={m: self.series.series(m) for m in METRICS},
                sampled=s.rates.prev.t if s.rates.prev else 0, forecast=s.forecast(st),
                sched_age=None if sched is None else max(s.feed.clock() - sched.t0, 0.0),
                backend=s.backend.name, kernel_release=self.kernel, netns=s.inum,
                who=_who(s.names), dnat=dnat, dnat_other=sum(dn.values()) - sum(n for _, n in dnat),
                dst_drops=dict(self.dst_drops.counts), dst_drops_other=self.dst_drops.other,
                labels=_labels(s.names), dumps=dict(s.feed.dumps), dump_seconds=s.feed.dump_seconds)

    def collect(self):
        snap = self.snapshot()
        for f in FAMILIES:
            fam = metric_family(f, snap)
            if fam.samples:                     # a family with nothing to say is absent
                yield fam


def update_series(session, series: SourceSeries, now: float, prune: bool) -> None:
    """Fold the session's cumulative per-source counts into the series;
    forget (in the live table's counters and the BPF maps) what is folded."""
    live = session.feed.entries
    drops = session.counters.drops_by_src(session.inum)
    srcs = set(live.inserts) | set(live.deletes) | set(drops)
    values = {src: {"inserts": live.inserts.get(src, 0), "deletes": live.deletes.get(src, 0),
                    "drops": drops.get(src, 0)} for src in srcs}
    gone = series.update(now, values, live.by["src"])
    if prune:
        gone += series.prunable(live.by["src"])
    final = session.backend.forget_sources(session.inum, set(gone))
    for src in gone:
        series.fold(src, final.get(src))
        live.inserts.pop(src, None)
        live.deletes.pop(src, None)


def registry_for(collector) -> CollectorRegistry:
    """The collector plus the process' own figures (process_resident_memory_bytes ...)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def run(session, listen: tuple[str, int], k: int, interval: float, on_ready=None,
        kernel: str = "") -> None:
    """Serve /metrics until the session is asked to stop; the pump loop
    feeds the session under a lock. Raises what breaks the loop (the caller
    exits non-zero: never a silent stale endpoint)."""
    lock = threading.Lock()
    series = SourceSeries(k=k)
    dst_drops = DestinationDrops(k)
    reg = registry_for(Collector(session, series, lock, kernel, dst_drops))
    with MetricsServer(listen[0], listen[1], lambda: generate_latest(reg), CONTENT_TYPE_LATEST):
        next_sample = next_prune = time.monotonic()
        if on_ready:
            on_ready()
        while not session.stopping:
            tick = time.monotonic() + PUMP_S
            with lock:
                dst_drops.add(session.pump())
                now = time.monotonic()
                if now >= next_sample:
                    session.sample()
                    prune = now >= next_prune
                    update_series(session, series, now, prune)
                    next_sample = now + interval
                    if prune:
                        next_prune = now + 60
            # a pump every PUMP_S, its work included (as session.wait): a
            # pump that took longer (a backlog of events) is followed at
            # once, or a burst outruns the socket's buffer and the events
            # lost cost a reconcile dump of the whole table
            time.sleep(max(0.0, tick - time.monotonic()))
