"""`cttrace serve`: a Prometheus exporter on the backend chosen at run time.

Reuses top's engine (tracer/top.py) for the live table, the events and the
exact counters; this module adds the bounded-cardinality bookkeeping and the
prometheus_client collector.

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

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

METRICS = ("inserts", "deletes", "drops")


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
        Returns the sources folded away (idle labelled ones): the caller must
        forget their counts too, or they would come back counted twice."""
        for src, vals in values.items():
            before = self.last.get(src, {})
            if vals != before:
                if src in self.labelled:
                    self.labelled[src] = now
                elif len(self.labelled) < self.k:
                    self.labelled[src] = now
                    self.offset[src] = dict(before)
            self.last[src] = vals
        gone = [src for src, t in self.labelled.items() if now - t > self.idle and not live.get(src)]
        for src in gone:
            self.fold(src)
        return gone

    def fold(self, src: str) -> None:
        vals = self.last.pop(src, {})
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


class Collector:
    """prometheus_client collector reading the engine's state under a lock."""

    def __init__(self, engine, series: SourceSeries, lock: threading.Lock, kernel_release: str):
        self.engine = engine
        self.series = series
        self.lock = lock
        self.kernel = kernel_release
        self.failed = False

    def collect(self):
        with self.lock:
            e = self.engine
            st = e._state
            c = e._counters
            rates = e.rates
            live = dict(e.live.by["src"])
            series = {m: self.series.series(m) for m in METRICS}
            names = e.names
        entries = GaugeMetricFamily("cttrace_conntrack_entries",
                                    "Entries in the conntrack table (as node_nf_conntrack_entries)")
        entries.add_metric([], st.count or 0)
        yield entries
        limit = GaugeMetricFamily("cttrace_conntrack_entries_limit",
                                  "nf_conntrack_max (as node_nf_conntrack_entries_limit)")
        limit.add_metric([], st.max or 0)
        yield limit
        b = GaugeMetricFamily("cttrace_conntrack_buckets", "Hash table buckets (nf_conntrack_buckets)")
        b.add_metric([], st.buckets or 0)
        yield b
        stat = CounterMetricFamily("cttrace_conntrack_stat", "The kernel's per-CPU conntrack "
                                   "counters, summed (/proc/net/stat/nf_conntrack)", labels=["stat"])
        for k, v in sorted(st.totals.items()):
            stat.add_metric([k], v)
        yield stat
        drops = CounterMetricFamily("cttrace_conntrack_drops", "Packets dropped because conntrack "
                                    "could not take them, by reason", labels=["reason"])
        drops.add_metric(["table_full"], st.totals.get("drop", 0))
        drops.add_metric(["insert_failed"], st.totals.get("insert_failed", 0))
        drops.add_metric(["early_drop"], st.totals.get("early_drop", 0))
        yield drops
        for m, help_ in (("inserts", "Entries created"), ("deletes", "Entries deleted"),
                         ("drops", "Packets dropped by netfilter")):
            fam = CounterMetricFamily(f"cttrace_source_{m}", f"{help_}, by original source "
                                      "(top K by activity, the rest in source=\"other\")",
                                      labels=["source", "container"])
            for src, v in sorted(series[m].items()):
                fam.add_metric([src, (names.ip(src) or "") if src != "other" else ""], v)
            yield fam
        g = GaugeMetricFamily("cttrace_source_entries", "Live entries by original source "
                              "(labelled sources; the rest in source=\"other\")", labels=["source", "container"])
        labelled = set(series["inserts"]) - {"other"}
        other = 0
        for src, n in live.items():
            if src in labelled:
                g.add_metric([src, names.ip(src) or ""], n)
            else:
                other += n
        g.add_metric(["other", ""], other)
        yield g
        lost = CounterMetricFamily("cttrace_events_lost", "Events lost on their way to cttrace "
                                   "(counts stay exact)", labels=["kind"])
        lost.add_metric(["perf"], c["lost"])
        lost.add_metric(["netlink_overrun"], e.overruns)
        lost.add_metric(["over_rate_limit"], c["totals"]["sampled_out"])
        lost.add_metric(["bpf_map_full"], c["totals"]["keys_full"])
        yield lost
        info = GaugeMetricFamily("cttrace_info", "Backend and kernel", labels=["backend", "kernel", "netns"])
        info.add_metric([e.be.name, self.kernel, str(e.inum)], 1)
        yield info
        up = GaugeMetricFamily("cttrace_last_sample_age_seconds", "Seconds since the last sample "
                               "of the kernel's counters (stale data shows here)")
        up.add_metric([], max(time.monotonic() - (rates.prev.t if rates.prev else 0), 0))
        yield up


def run(engine, listen: tuple[str, int], k: int, interval: float, stop: threading.Event,
        on_ready=None, kernel: str = "") -> None:
    """Serve /metrics until `stop`; the poll loop feeds the state under a lock.
    Raises what breaks the loop (the caller exits non-zero: never a silent
    stale endpoint)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    lock = threading.Lock()
    series = SourceSeries(k=k)
    collector = Collector(engine, series, lock, kernel)
    REGISTRY.register(collector)
    server, thread = start_http_server(listen[1], addr=listen[0])
    try:
        next_sample = next_prune = time.monotonic()
        if on_ready:
            on_ready()
        while not stop.is_set():
            with lock:
                engine.pump()
                now = time.monotonic()
                if now >= next_sample:
                    engine.sample()
                    drops = engine.be.drops_by_src(engine.inum, engine._counters)
                    live = engine.live
                    srcs = set(live.inserts) | set(live.deletes) | set(drops)
                    values = {s: {"inserts": live.inserts.get(s, 0), "deletes": live.deletes.get(s, 0),
                                  "drops": drops.get(s, 0)} for s in srcs}
                    gone = series.update(now, values, live.by["src"])
                    next_sample = now + interval
                    if now >= next_prune:
                        gone += series.prunable(live.by["src"])
                        next_prune = now + 60
                    for src in gone:
                        series.fold(src)
                        live.inserts.pop(src, None)
                        live.deletes.pop(src, None)
                    engine.be.forget_sources(engine.inum, set(gone))
            stop.wait(0.05)
    finally:
        server.shutdown()
        REGISTRY.unregister(collector)
