"""The recorder: a tracing session written to a capture file
(tracer/formats/capture.py) for `cttrace report`.

    rec = Recorder(s, interval, "host")
    w = Writer(path, {..., "state": asdict(rec.host_state())})
    rec.start(w)                  # the first stats record
    s.ready()
    rec.run(seconds, max_records)
    rec.finish()                  # the last stats record and the end record
    w.close()                     # complete: the file takes its name

It records, as the session's pump hands them over, every drop (filtered
and attributed by the session), every insert and delete (ctnetlink events:
the session's entry_sink), what was lost (a receive-buffer overrun), the
table's counters every interval, and entries records (the table's entries
by container, from a dump) as often as a dump's cost allows; table-full
drops arriving between two intervals take an extra stats record (a burst
shorter than the interval still shows the table at its limit). Sources
without a name when recorded are named in the end record, if known by then.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict

from tracer.core.events import TABLE_FULL
from tracer.core.hoststate import HostState
from tracer.formats.capture import ENTRIES_MAX_COUNT, Writer, entries_record, row_record
from tracer.kernel import ctnetlink
from tracer.kernel import netns as ns
from tracer.kernel.ctevents import DELETE, EventBatch
from tracer.kernel.host import read_live
from tracer.live.session import PUMP_S, TracingSession

UNNAMED_MAX = 100_000     # sources remembered for naming at the end, at most
DUMP_SHARE = 20           # an entries dump at most every 20 times its own time (5% of the capture's)
BURST_SAMPLE_S = 0.25     # table-full drops arriving: a stats record at most this often between intervals


class Recorder:
    def __init__(self, session: TracingSession, interval: float, netns_label: str):
        self.s = session
        self.interval = interval
        self.netns_label = netns_label      # how the followed namespace was named ("host": ours)
        self.w: Writer | None = None
        self.counts = {"insert": 0, "delete": 0, "drop": 0}
        self.unnamed: set[str] = set()
        self._entries_due = 0.0             # when the next entries record is due (monotonic)
        self._last_stats = 0.0              # when the last stats record was taken (monotonic)
        session.entry_sink = self._entry_events

    def host_state(self) -> HostState:
        """The followed namespace's HostState, read through the session's
        pinned reference (it survives `ip netns del` while recording)."""
        h = read_live(self.s.netns_ref, 0.1, names=self.s.names.names)
        h.netns = self.netns_label
        return h

    def start(self, w: Writer) -> None:
        self.w = w
        self.stats()

    def run(self, seconds: float, max_records: int | None = None, progress=None) -> None:
        """Record until `seconds` have passed, the session stops, or
        `max_records` are written; progress(seconds done, counts) after each pump."""
        s, w = self.s, self.w
        end = time.monotonic() + seconds
        next_stats = time.monotonic() + self.interval
        while not s.stopping and time.monotonic() < end and not (max_records and w.records >= max_records):
            drops = s.wait(PUMP_S)
            self._drops(drops)
            now = time.monotonic()
            if now >= next_stats:
                self.stats()
                w.flush()
                next_stats += self.interval
            elif now - self._last_stats >= BURST_SAMPLE_S and any(d.reason == TABLE_FULL for d in drops):
                # A table-full burst shorter than the interval (a spike, a
                # limit lowered for a moment) would otherwise fall between two
                # samples: the table's count and limit while it refuses.
                self.sample()
            if progress:
                progress(seconds - (end - time.monotonic()), self.counts)

    def finish(self) -> None:
        """The last stats record and the end record: exact per-source drops,
        losses, the state at the end, late names."""
        s = self.s
        self.stats()
        c = s.backend.counters()
        end_state = self.host_state()
        by_src = c.drops_by_src(s.inum)
        # sources that had no name when recorded (a container that had just
        # started), named now (exited ones are remembered a while)
        s.names.refresh()
        late = {a: n for a in set(by_src) | self.unnamed if (n := s.names.names.by_ip.get(a))}
        self.w.write({"k": "end", "t": time.time(), "totals": self.counts, "sources": by_src,
                      "lost": c.lost, "state": asdict(end_state), "names": late})

    def sample(self):
        """A stats record: the table's count, limit and counters, now."""
        st = self.s.read_table()
        self.w.write({"k": "stats", "t": time.time(), "count": st.count, "max": st.max,
                      "kernel": st.totals})
        self._last_stats = time.monotonic()
        return st

    def stats(self) -> None:
        """A stats record, and an entries record when one is due."""
        st = self.sample()
        if time.monotonic() >= self._entries_due and (st.count or 0) <= ENTRIES_MAX_COUNT:
            t0 = time.monotonic()
            try:
                self.w.write(self.entries())
            except ctnetlink.NetlinkError:
                self._entries_due = float("inf")     # not readable here: no entries records
                return
            self._entries_due = t0 + max(self.interval, DUMP_SHARE * (time.monotonic() - t0))

    def entries(self) -> dict:
        """An entries record: the followed table's entries by container (or
        source address), from a ctnetlink dump counted as it streams, in the
        followed namespace through the session's pinned reference."""
        raw: Counter = Counter()
        with ns.entered(self.s.netns_ref):
            res = ctnetlink.dump(sink=lambda rows: raw.update(r[ctnetlink.R_SRC] for r in rows))
        dec = ctnetlink.NetlinkDecoder()
        name_of = self.s.names.ip
        by: Counter = Counter()
        for a, n in raw.items():
            src = dec.addr(a)[1]
            by[name_of(src) or src] += n
        return entries_record(time.time(), by, res.count)

    def _drops(self, drops) -> None:
        for d in drops:
            if d.container is None and len(self.unnamed) < UNNAMED_MAX:
                self.unnamed.add(d.src)
            self.w.write({"k": "drop", "t": d.ts, **d.to_dict()})
        self.counts["drop"] += len(drops)

    def _entry_events(self, batch: EventBatch) -> None:
        """The session's entry_sink: inserts and deletes as they arrive."""
        now = time.time()
        for kind, row in batch.events:
            k = "delete" if kind is DELETE else "insert"
            rec = row_record(k, row, now, self.s.names.ip)
            if rec["container"] is None and len(self.unnamed) < UNNAMED_MAX:
                self.unnamed.add(rec["src"])      # named at the end, if known by then
            self.w.write(rec)
            self.counts[k] += 1
        if batch.overrun:
            self.w.write({"k": "lost", "t": now, "what": "netlink events (receive buffer overrun)", "n": 1})
