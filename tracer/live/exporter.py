"""`cttrace serve`: a Prometheus exporter on the backend chosen at run time.

A user of the tracing session (tracer/session.py), like `top`: the session
pumps drop and table events; this module adds the bounded-cardinality
bookkeeping and the prometheus_client collector. As node_exporter does, the
table's state and the probes' counters are read when Prometheus scrapes;
only the per-source series are kept up to date by the pump loop (every
--interval), so that a source keeps its label while it is active.

Cardinality: at most K sources get series of their own ("sticky": a source
keeps its series while it is active); every other source is summed into
source="other". A labelled source idle for `idle` seconds gives its slot up,
and its counts move into "other"'s base, so every counter stays monotonic.
Sources that are neither labelled nor holding entries are folded the same
way every minute, so memory stays bounded while sources come and go.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

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
    """prometheus_client collector: reads the kernel (table state, per-CPU
    stats) and the probes' maps at scrape time, and the session's live
    table and series under the pump loop's lock (never its private state)."""

    def __init__(self, session, series: SourceSeries, lock: threading.Lock, kernel_release: str):
        self.session = session
        self.series = series
        self.lock = lock
        self.kernel = kernel_release

    def collect(self):
        s = self.session
        with self.lock:
            st = s.read_table()
            kernel = s.kernel_totals(st)
            c = s.backend.counters()
            lost = s.lost()
            live = dict(s.feed.entries.by["src"])
            dn = s.feed.entries.dnat
            dnat = sorted(dn.items(), key=lambda kv: (-kv[1], kv[0]))[:self.series.k]
            dnat_other = sum(dn.values()) - sum(c for _, c in dnat)
            series = {m: self.series.series(m) for m in METRICS}
            sampled = s.rates.prev.t if s.rates.prev else 0
            fc = s.forecast(st)
            sched = s.feed.entries.sched
            sched_age = None if sched is None else max(s.feed.clock() - sched.t0, 0.0)
        names = s.names

        def who(src: str) -> list[str]:
            """container, namespace, pod labels of an address (Kubernetes
            conventions: a pod's address has its pod and namespace)."""
            if src == "other":
                return ["", "", ""]
            n = names.ip(src)
            m = names.meta(n) if hasattr(names, "meta") else {}
            if m.get("pod"):
                return [m.get("container", ""), m["namespace"], m["pod"]]
            return [n or "", "", ""]
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
        # +Inf when not filling (an alert `< 3600` stays quiet), NaN before
        # the first interval or without a limit (unknown, not "never")
        def secs(v):
            return float("nan") if fc["filling"] is None else float("inf") if v is None else v
        for name, key, help_ in (
                ("", "seconds", "Seconds until the table is full: the entries' expiry schedule from "
                 "the last dump, new entries at the last intervals' insert rate living their "
                 "kind's timeout; +Inf when not filling, NaN when unknown"),
                ("_low", "low", "Time to full at the high end of the insert rate band (+Inf: never)"),
                ("_high", "high", "Time to full at the low end of the insert rate band (+Inf: never)")):
            g = GaugeMetricFamily(f"cttrace_conntrack_seconds_to_full{name}", help_)
            g.add_metric([], secs(fc.get(key)))
            yield g
        if sched_age is not None:               # absent until the first dump is in
            age = GaugeMetricFamily("cttrace_conntrack_forecast_schedule_age_seconds",
                                    "Age of the expiry schedule the forecast ages (the last dump's start)")
            age.add_metric([], round(sched_age, 1))
            yield age
        stat = CounterMetricFamily("cttrace_conntrack_stat", "The kernel's per-CPU conntrack "
                                   "counters, summed (/proc/net/stat/nf_conntrack)", labels=["stat"])
        for k, v in sorted(kernel.items()):
            if k != "table_full":
                stat.add_metric([k], v)
        yield stat
        drops = CounterMetricFamily(
            "cttrace_conntrack_drops", "Packets dropped by netfilter in this namespace, by "
            "reason: table_full (conntrack refused a new entry; the kernel's drop less its "
            "insert_failed), insert_failed (a clash at confirm: NAT port exhaustion, the UDP DNS "
            "race), both since boot; invalid, rule, unknown: since cttrace started",
            labels=["reason"])
        mine = c.reasons_by_netns.get(s.inum, {})
        drops.add_metric(["table_full"], kernel.get("table_full", 0))
        drops.add_metric(["insert_failed"], kernel.get("insert_failed", 0))
        for r in ("invalid", "rule", "unknown"):
            drops.add_metric([r], mine.get(r, 0))
        yield drops
        early = CounterMetricFamily("cttrace_conntrack_early_drops", "Entries evicted to make room "
                                    "in a full table (the kernel's early_drop; not a packet drop)")
        early.add_metric([], kernel.get("early_drop", 0))
        yield early
        for m, help_ in (("inserts", "Entries created"), ("deletes", "Entries deleted"),
                         ("drops", "Packets dropped by netfilter")):
            fam = CounterMetricFamily(f"cttrace_source_{m}", f"{help_}, by original source "
                                      "(top K by activity, the rest in source=\"other\")",
                                      labels=["source", "container", "namespace", "pod"])
            for src, v in sorted(series[m].items()):
                fam.add_metric([src, *who(src)], v)
            yield fam
        g = GaugeMetricFamily("cttrace_source_entries", "Live entries by original source "
                              "(labelled sources; the rest in source=\"other\")",
                              labels=["source", "container", "namespace", "pod"])
        labelled = set(series["inserts"]) - {"other"}
        other = 0
        for src, n in live.items():
            if src in labelled:
                g.add_metric([src, *who(src)], n)
            else:
                other += n
        g.add_metric(["other", "", "", ""], other)
        yield g
        d = GaugeMetricFamily("cttrace_destination_entries", "Live DNATed entries by the address "
                              "their replies come from: the destination side of published ports, "
                              "Services and NodePorts (top K; the rest in destination=\"other\")",
                              labels=["destination", "container", "namespace", "pod"])
        for dst, n in dnat:
            d.add_metric([dst, *who(dst)], n)
        d.add_metric(["other", "", "", ""], dnat_other)
        yield d
        lf = CounterMetricFamily("cttrace_events_lost", "Events lost on their way to cttrace "
                                 "(counts stay exact)", labels=["kind"])
        lf.add_metric(["perf"], lost["events"])
        lf.add_metric(["netlink_overrun"], lost.get("netlink_overruns", 0))
        lf.add_metric(["over_rate_limit"], lost["over_rate_limit"])
        lf.add_metric(["bpf_map_full"], lost["bpf_map_full"])
        yield lf
        info = GaugeMetricFamily("cttrace_info", "Backend and kernel", labels=["backend", "kernel", "netns"])
        info.add_metric([s.backend.name, self.kernel, str(s.inum)], 1)
        yield info
        up = GaugeMetricFamily("cttrace_last_sample_age_seconds", "Seconds since the pump loop last "
                               "sampled the probes' per-source counters (a stuck loop shows here)")
        up.add_metric([], max(time.monotonic() - sampled, 0))
        yield up


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
    for src in gone:
        series.fold(src)
        live.inserts.pop(src, None)
        live.deletes.pop(src, None)
    session.backend.forget_sources(session.inum, set(gone))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):      # no line per scrape on stderr
        pass


def http_server(listen: tuple[str, int], registry) -> WSGIServer:
    """/metrics on a thread; the caller shuts it down. prometheus_client's
    start_http_server returns its server only from 0.17 on (Debian 12 has
    0.16), so it is built here from its public WSGI app."""
    from prometheus_client import make_wsgi_app

    family = socket.getaddrinfo(listen[0], listen[1], type=socket.SOCK_STREAM)[0][0]

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    httpd = Server((listen[0], listen[1]), _QuietHandler)
    httpd.set_app(make_wsgi_app(registry))
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd


def run(session, listen: tuple[str, int], k: int, interval: float, on_ready=None,
        kernel: str = "") -> None:
    """Serve /metrics until the session is asked to stop; the pump loop
    feeds the session under a lock. Raises what breaks the loop (the caller
    exits non-zero: never a silent stale endpoint)."""
    from prometheus_client.core import REGISTRY

    lock = threading.Lock()
    series = SourceSeries(k=k)
    collector = Collector(session, series, lock, kernel)
    REGISTRY.register(collector)
    server = http_server(listen, REGISTRY)
    try:
        next_sample = next_prune = time.monotonic()
        if on_ready:
            on_ready()
        while not session.stopping:
            with lock:
                session.pump()
                now = time.monotonic()
                if now >= next_sample:
                    session.sample()
                    prune = now >= next_prune
                    update_series(session, series, now, prune)
                    next_sample = now + interval
                    if prune:
                        next_prune = now + 60
            time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
        REGISTRY.unregister(collector)
