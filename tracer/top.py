"""`cttrace top`: the engine (edge) that feeds the pure state
(tracer/aggregate.py) from the backend, ctnetlink events and the kernel's
counters, and the loop that renders it on its own timer.

The view is rendered from state every --interval; events are pumped every
50 ms in between, so a flood delays neither (drop events are rate-limited in
BPF; counts come from maps and kernel counters).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import Counter, deque

from tracer import ctnetlink, table
from tracer import netns as ns
from tracer.aggregate import GROUPS, SORTS, LiveTable, Rates, Sample, top_rows
from tracer.attribution import Attribution
from tracer.ctevents import DELETE, CtEvents
from tracer.conntrack import PORT_PROTOS, parse_proto, proto_name


class RowFilter:
    """--proto/--port/--src/--dst, on raw ctnetlink rows and on drops (the
    one filter of top, drops and capture). Address tests are cached."""

    def __init__(self, protos=(), ports=(), src=(), dst=()):
        self.protos = {parse_proto(p) for p in protos}
        self.proto_names = {proto_name(p) for p in self.protos}
        self.ports = set(ports)
        self.src = [ipaddress.ip_network(c, strict=False) for c in src]
        self.dst = [ipaddress.ip_network(c, strict=False) for c in dst]
        self.active = bool(self.protos or self.ports or self.src or self.dst)
        self._in: dict = {}

    def _within(self, nets, addr) -> bool:
        """addr (text or packed bytes) in one of nets; cached per (nets, addr)."""
        key = (id(nets), addr)
        ok = self._in.get(key)
        if ok is None:
            if len(self._in) > 100_000:
                self._in.clear()
            try:
                ip = ipaddress.ip_address(addr)
                ok = any(ip.version == n.version and ip in n for n in nets)
            except ValueError:
                ok = False
            self._in[key] = ok
        return ok

    def row(self, row: tuple) -> bool:
        if not self.active:
            return True
        if self.protos and row[0] not in self.protos:
            return False
        if self.ports and not (row[0] in PORT_PROTOS and (row[4] in self.ports or
                                                          (len(row) > 7 and row[7] in self.ports))):
            return False
        return (not self.src or self._within(self.src, row[2])) and \
            (not self.dst or self._within(self.dst, row[3]))

    def drop(self, d) -> bool:
        if not self.active:
            return True
        if self.protos and d.proto not in self.proto_names:
            return False
        if self.ports and d.sport not in self.ports and d.dport not in self.ports:
            return False
        return (not self.src or self._within(self.src, d.src)) and \
            (not self.dst or self._within(self.dst, d.dst))


class TopEngine:
    def __init__(self, backend, netns: str | None, flt: RowFilter, attribution: Attribution):
        self.be = backend
        self.netns = netns
        self.flt = flt
        self.names = attribution
        self.live = LiveTable()
        self.rates = Rates()
        self.recent: deque = deque(maxlen=12)
        self.overruns = 0
        self.resyncs = 0
        with ns.entered(netns):
            self.inum = ns.inode()
        self.events: CtEvents | None = None

    def start(self) -> "TopEngine":
        self.events = CtEvents(self.netns, updates=True)   # subscribe first, then dump:
        self._resync()                                    # no entry falls in between
        self.sample()
        return self

    def _resync(self) -> None:
        with ns.entered(self.netns):
            rows = ctnetlink.dump().rows
        self.live.reset([r for r in rows if self.flt.row(r)])
        # Events queued meanwhile: those from before the dump are in it already
        # (a known entry is left as the dump shows it), those after it are not.
        for kind, row in self.events.poll(0).events:
            if not self.flt.row(row):
                continue
            if kind is DELETE:
                self.live.delete(row)
            elif LiveTable.key(row) not in self.live.entries:
                self.live.insert(row)
        self.resyncs += 1

    def pump(self) -> None:
        """Take in what arrived: drop events and conntrack events."""
        for d in self.be.poll(0):
            if d.netns == self.inum and self.flt.drop(d):
                d.container = self.names.ip(d.src) or self.names.netns(d.netns)
                self.recent.appendleft(d)
        batch = self.events.poll(0)
        for kind, row in batch.events:
            if not self.flt.row(row):
                continue
            if kind is DELETE:
                self.live.delete(row)
            else:
                self.live.insert(row)
        if batch.overrun:
            self.overruns += 1
            self._resync()

    def sample(self) -> dict:
        counters = self.be.counters()
        with ns.entered(self.netns):
            st = table.read()
        kernel = st.totals
        s = Sample(t=time.monotonic(), inserts=Counter(self.live.inserts),
                   deletes=Counter(self.live.deletes),
                   drops=Counter(self.be.drops_by_src(self.inum, counters)),
                   kernel=kernel, count=st.count, max=st.max)
        self._state = st
        self._counters = counters
        return self.rates.update(s)

    def frame(self, group: str, sort: str, n: int, paused: bool = False) -> dict:
        r = self.rates.last
        st = self._state
        t = r.get("table", {})
        name_of = lambda a: self.names.ip(a)  # noqa: E731
        rows = top_rows(self.live, r, group, sort, n, name_of)
        src_rows = rows if group == "src" else top_rows(self.live, r, "src", "entries", n, name_of)
        c = self._counters
        return {
            "ts": time.time(), "netns": self.inum,
            "netns_name": self.names.netns(self.inum) or (self.netns or "current"),
            "backend": self.be.name, "blind_spots": self.be.blind_spots,
            "count": st.count, "max": st.max, "buckets": st.buckets, "tracked": len(self.live),
            "interval": r.get("seconds", 0.0),
            "rates": {"inserts": t.get("inserts", 0.0), "deletes": t.get("deletes", 0.0),
                      "drops": t.get("drop", 0.0), "early_drops": t.get("early_drop", 0.0),
                      "insert_failed": t.get("insert_failed", 0.0), "invalid": t.get("invalid", 0.0)},
            "group": group, "sort": sort, "paused": paused,
            "top": [{**x, "key": str(x["key"])} for x in rows],
            "top_sources": [{"src": x["key"], "entries": x["entries"],
                             "inserts_per_s": x["inserts_per_s"], "deletes_per_s": x["deletes_per_s"],
                             "drops_per_s": x["drops_per_s"], "drops_total": x["drops_total"],
                             "container": x["container"]}
                            for x in src_rows],
            # exact, since top started: the kernel's counters and the probes' maps
            "totals": {"table_full": self.rates.totals["drop"],
                       "early_drops": self.rates.totals["early_drop"],
                       "insert_failed": self.rates.totals["insert_failed"],
                       "inserts": self.rates.totals["inserts"], "deletes": self.rates.totals["deletes"]},
            "drops": [d.to_dict() for d in list(self.recent)[:8]],
            "lost": {"events": c["lost"], "netlink_overruns": self.overruns,
                     "over_rate_limit": c["totals"]["sampled_out"]},
            "history": {"fill": list(self.rates.fill_hist), "drops": list(self.rates.drop_hist)},
        }

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        self.be.close()
        self.names.stop()


__all__ = ["TopEngine", "RowFilter", "GROUPS", "SORTS"]
_ = os
