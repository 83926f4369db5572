"""The live table feed: one namespace's conntrack entries, followed from
ctnetlink events and reconciled with dumps, for `top`, `serve` and `capture`.

    src = LiveSource(netns, accept=flt.row if flt.active else None).start()
    while running:
        src.pump()                 # every ~50 ms; bounded work per call
        src.entries.by["src"] ...     # counts per source/destination/port/state
        src.status()               # how fresh those counts are

Why events alone are not enough. An entry only sends UPDATE and DESTROY
if it carries the event extension. With net.netfilter.nf_conntrack_events=2
("auto", the default since Linux 5.19) only entries created while a
listener existed carry it, so entries older than cttrace expire, close or
are deleted silently; with 0 no entry sends anything. So the feed:

1. subscribes to NEW, UPDATE and DESTROY first, then dumps (no entry falls
   in between); entries known from a dump only are "legacy";
2. reconciles: it dumps again, a bounded number of rows per pump, while
   events keep flowing, and removes what the dump did not show (a
   generation mark per entry; deletes seen during the dump are remembered
   so that a row the dump read before the delete does not come back);
3. schedules reconciles by cost: never sooner than COST_FACTOR times the
   last dump's own run time after it (so dumps take at most 1/COST_FACTOR
   of a core: about 4 s per 100 s at 1,000,000 entries), and only when
   needed: events off, legacy entries left, or events lost (ENOBUFS);
4. with events on and no legacy entry left, counts are exact from events.

Every dump also gives the expiry schedule the forecast of `top` and
`serve` ages (forecast.Schedule: counts of entries by kind and remaining
timeout, nothing per entry; LiveTable.sched): the first dump's, then each
reconcile's, plus the entries inserted since (NEW events carry their
timeout). Refreshed entries outlive their schedule, so with nothing else
calling for a reconcile one still comes when the schedule is SCHEDULE_MAX_AGE
old, or SCHEDULE_COST_FACTOR times the last dump's run time if that is
longer (with events exact, these dumps take at most 1/200 of a core).

An overrun during a dump never starts another dump at once: the next one
waits its turn, so a big table cannot make the feed resync in a loop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from tracer.kernel import ctnetlink
from tracer.kernel import netns as ns
from tracer.kernel import stats as kstats
from tracer.core.aggregate import LiveTable
from tracer.kernel.ctevents import DELETE, INSERT, CtEvents, events_mode

EVENTS_NAMES = {0: "off", 1: "on", 2: "auto"}
# why a reconcile dump ran (_due's text) -> the short name serve labels it with
DUMP_REASONS = {"events lost": "events_lost", "events off": "events_off",
                "entries older than the listener": "legacy", "events unknown": "events_unknown",
                "forecast schedule refresh": "schedule_refresh"}


def _all(row) -> bool:
    return True


class LiveSource:
    """One namespace's live table (see the module docstring)."""

    EVENTS_PER_PUMP = 20_000      # ~40 ms of Python per pump at most
    ROWS_PER_PUMP = 10_000
    COST_FACTOR = 25              # reconcile work <= 1/25 of a core
    MIN_PERIOD = 1.0              # seconds between reconciles of a small table
    START_ROWS = 10_000           # rows per step of the first dump (events between steps)
    SCHEDULE_MAX_AGE = 300.0      # a reconcile refreshes the forecast's schedule at least this often ...
    SCHEDULE_COST_FACTOR = 200    # ... and at most at 1/200 of a core (a big table's dump costs seconds)

    def __init__(self, netns: str | None, accept=None, clock=time.monotonic,
                 rcvbuf: int = 32 << 20):
        self.rcvbuf = rcvbuf
        self.netns = netns
        self.accept = accept or _all      # None: every row, with no call per row and event
        self.clock = clock
        self.entries = LiveTable()
        self.entries.clock = clock
        self.overruns = 0           # ENOBUFS on the event socket (events lost)
        self._overrun_at: float | None = None
        self.resyncs = 0            # reconcile dumps completed after start
        self.dumps: Counter = Counter()   # ... by reason (DUMP_REASONS' short names)
        self.dump_seconds = 0.0     # wall seconds spent on the completed reconcile dumps (wall time: the CPU unless the machine is busy)
        self.swept = 0              # entries removed by reconciles (gone without an event)
        self.errors = 0             # reconcile dumps that failed (last_error says why)
        self.last_error: str | None = None
        self.events: CtEvents | None = None
        self.mode: int | None = None
        self.backlog = False        # the last pump left events queued (budget reached)
        self._reader: ctnetlink.DumpReader | None = None
        self._dump_work = 0.0       # seconds spent in the running dump
        self._last_work = 0.0       # ... in the last complete one
        self._reconciled_at: float | None = None   # when the last complete dump began
        self._next: float | None = None
        self._dirty = False         # events lost since the running/last dump began
        self._evented = False       # entries new to the running reconcile carry the event extension
        self._why = "start"
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = 0.0

    # --- life cycle ----------------------------------------------------------
    def start(self, background: bool = False) -> "LiveSource":
        """Subscribe, then read the whole table. With `background`, the
        dump is read by a thread and `wait()` must be called before the
        counts are used (e.g. overlap it with compiling the BPF programs:
        the kernel builds the dump and BCC compiles without the GIL).
        Errors of the dump are raised by wait()."""
        with ns.entered(self.netns):
            self.mode = events_mode()
        self.events = CtEvents(self.netns, rcvbuf=self.rcvbuf, updates=True)   # subscribe first
        self._started = self.clock()
        self._thread = threading.Thread(target=self._initial, daemon=True, name="cttrace-dump")
        self._thread.start()
        if not background:
            self.wait()
        return self

    def _initial(self) -> None:
        """The first dump (then: subscribed already), in its own thread: one
        more thread receives while this one parses and counts."""
        t0 = time.perf_counter()
        live, accept = self.entries, self.accept
        try:
            sink = live.fill_rows if accept is _all else \
                (lambda rows: live.fill_rows(list(filter(accept, rows))))
            with ns.entered(self.netns):
                live.sysctls = kstats.timeouts()
                live.fill_start()
                ctnetlink.dump(sink=sink)
            live.fill_end(defer=True)       # the store's sort: in the first pump
        except BaseException as e:          # raised again by wait(), in the caller's thread
            self._error = e
        finally:
            self._last_work = time.perf_counter() - t0

    def wait(self) -> "LiveSource":
        """Block until the first dump is in (see start)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                e, self._error = self._error, None
                raise e
            self._reconciled_at = self._started
            self._next = self.clock() + self.period()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.events is not None:
            self.events.close()

    # --- the pump -----------------------------------------------------------
    def pump(self) -> None:
        """Take in what arrived; at most EVENTS_PER_PUMP events and
        ROWS_PER_PUMP dumped rows per call. Nothing until the first dump is
        in (start(background=True))."""
        if self._thread is not None:
            if self._thread.is_alive():
                return
            self.wait()
        self.entries.settle()
        self._events()
        if self._reader is not None:
            self._step(self.ROWS_PER_PUMP)
        else:
            why = self._due()
            if why:
                self._begin(why)

    def _events(self) -> None:
        batch = self.events.poll(0, max_events=self.EVENTS_PER_PUMP)
        self.backlog = batch.more
        live, accept = self.entries, self.accept
        for kind, row in batch.events:
            if accept is not _all and not accept(row):
                continue
            if kind is DELETE:
                live.delete(row)
            elif kind is INSERT:
                live.insert(row)
            else:
                live.update(row)
        live.sched_flush()
        if batch.overrun:
            self.overruns += 1
            self._overrun_at = self.clock()
            self._dirty = True

    def overruns_since(self, t: float) -> bool:
        """Were events lost after clock time t?"""
        return self._overrun_at is not None and self._overrun_at >= t

    def _due(self) -> str | None:
        """Why a reconcile is due now, or None."""
        now = self.clock()
        if self._next is None or now < self._next:
            return None
        if self._dirty:
            return "events lost"
        if self.mode == 0:
            return "events off"
        if self.entries.legacy:
            # they may expire, close or be deleted without a word: a TCP
            # entry's timeout says nothing about a `conntrack -D`
            return "entries older than the listener"
        if self.mode is None:
            return "events unknown"
        if self.entries.sched is not None and now - self.entries.sched.t0 >= \
                max(self.SCHEDULE_MAX_AGE, self.SCHEDULE_COST_FACTOR * self._last_work):
            # events exact: only the forecast's schedule ages (refreshed entries
            # outlive it); 1M entries: a dump every ~15-40 min, < 0.5% of a core
            return "forecast schedule refresh"
        return None

    def _begin(self, why: str) -> None:
        try:
            with ns.entered(self.netns):
                self._reader = ctnetlink.DumpReader()
                self.entries.sysctls = kstats.timeouts()
                # entries the first dump did not show were made after we
                # subscribed: with events on they carry the event extension
                # (unless events were switched off since)
                self._evented = self.mode in (1, 2) and events_mode() == self.mode
        except (ctnetlink.NetlinkError, ns.NetnsError) as e:
            self.errors += 1
            self.last_error = str(e)
            self._next = self.clock() + self.period()
            return
        self._why = why
        self._dirty = False
        self._dump_work = 0.0
        self._started = self.clock()
        self.entries.begin()

    def _step(self, max_rows: int) -> None:
        t0 = time.perf_counter()
        reader = self._reader
        try:
            rows = reader.read(max_rows)
        except ctnetlink.NetlinkError as e:      # counted and shown; tried again next period
            reader.close()
            self._reader = None
            self.entries.abort()
            self.errors += 1
            self.last_error = str(e)
            self._next = self.clock() + self.period()
            return
        seen, accept, evented = self.entries.seen, self.accept, self._evented
        for row in rows if accept is _all else filter(accept, rows):
            seen(row, evented)
        self.entries.sched_tick()
        if reader.done:
            reader.close()
            self._reader = None
            self.swept += self.entries.sweep()
            self.resyncs += 1
            self.dumps[DUMP_REASONS.get(self._why, self._why)] += 1
            self._reconciled_at = self._started
            self._dump_work += time.perf_counter() - t0
            self.dump_seconds += self._dump_work
            self._last_work = self._dump_work
            self._next = self.clock() + self.period()
        else:
            self._dump_work += time.perf_counter() - t0

    def period(self) -> float:
        """Seconds between reconciles: scaled by the last dump's cost."""
        return max(self.MIN_PERIOD, self.COST_FACTOR * self._last_work)

    # --- what the views show -------------------------------------------------
    def status(self) -> dict:
        """How fresh the live counts are.

        events: "on", "auto", "off" (net.netfilter.nf_conntrack_events) or
        "unknown"; exact: counts follow every change as events arrive
        (events on, no legacy entry, nothing lost since the last dump);
        otherwise they are as of `reconciled_age_s` ago at worst, and the
        next reconcile is due in `next_reconcile_s`."""
        self.entries.settle()
        now = self.clock()
        mode = EVENTS_NAMES.get(self.mode, "unknown")
        exact = self.mode in (1, 2) and not self.entries.legacy and not self._dirty
        out = {
            "events": mode,
            "exact": exact,
            "entries": len(self.entries),
            "legacy": self.entries.legacy,
            "reconciled_age_s": None if self._reconciled_at is None else round(now - self._reconciled_at, 3),
            "reconcile_period_s": round(self.period(), 3),
            "next_reconcile_s": None if self._next is None or self._reader is not None
            else round(max(self._next - now, 0.0), 3),
            "reconciling": self._reader is not None,
            "last_dump_s": round(self._last_work, 3),
            "pending": self.backlog,
            "overruns": self.overruns,
            "resyncs": self.resyncs,
            "swept": self.swept,
            "errors": self.errors,
        }
        if self.last_error:
            out["last_error"] = self.last_error
        if mode == "off":
            out["note"] = ("nf_conntrack_events=0: the kernel sends no conntrack events; live "
                           f"counts come from a dump every {self.period():.0f} s or so, and "
                           "inserts/deletes per source are not seen")
        elif self._dirty:
            out["note"] = "events were lost (receive buffer overrun): a dump will reconcile"
        elif self.entries.legacy:
            out["note"] = (f"{self.entries.legacy:,} entries are older than this listener and may "
                           "send no events (nf_conntrack_events=2): they are re-read from a dump "
                           f"every {self.period():.0f} s or so")
        return out


__all__ = ["LiveSource", "EVENTS_NAMES", "DUMP_REASONS"]
