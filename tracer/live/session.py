"""One tracing session: what `drops`, `top`, `capture` and `serve` share.

    with TracingSession("top", Options(follow_entries=True, netns=...)) as s:
        while not s.stopping:
            s.wait(interval)          # pump drops and table events every 50 ms
            s.sample()                # the kernel's counters and the probes' maps
            render(top_frame(s.live_state(), ...))   # tracer/core/frame.py

The session owns, and closes in one place, whatever the command asked for:
the backend (BPF probes), the live table (ctnetlink events, subscribed
before the dump: tracer/live/source.py), container attribution, the signal
handlers and the ready-file. Signals only set a flag (`stopping`): nothing
is raised inside BCC's perf-buffer callbacks, so Ctrl-C and SIGTERM are
never swallowed under a flood. Every loop checks the flag at least every
50 ms.

Opening checks root, the namespace and the backend first and raises
SessionError with a one-line message that says what is wrong and what to do.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from tracer.core import counters, forecast
from tracer.kernel import netns as ns
from tracer.kernel import procmem
from tracer.kernel import stats as kstats
from tracer.core.aggregate import OTHER, Rates, Sample
from tracer.core.events import Counters, Drop
from tracer.core.filters import Filter
from tracer.core.frame import LiveState
from tracer.backends import BackendError, choose, make
from tracer.kernel import ctnetlink, features
from tracer.kernel.attribution import Attribution
from tracer.kernel.ctevents import CtEvents
from tracer.formats.files import ReadyFileError, write_ready_file
from tracer.live.source import LiveSource

PUMP_S = 0.05          # how often events are taken in while waiting
ENTRY_BATCH = 20_000   # raw entry events handed over per pump, at most
RATE_INTERVALS = 5     # the forecast's insert rate: over the last 5 intervals
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORGET_EVERY = 60.0    # seconds between two looks for idle sources
TRIM_EVERY = 60.0      # seconds between two returns of malloc's free pages (procmem.trim_heap:
                       # 2-4 ms on a 200 MB heap; a reconcile dump or a burst of events leaves
                       # free chunks inside the heap that glibc keeps otherwise)
FORGET_IDLE = 600.0    # top: a source without entries idle this long is summed into OTHER (as serve does)


class SessionError(Exception):
    """The session cannot start; the message names what is missing and the fix."""


@dataclass
class Options:
    backend: str = "auto"              # auto, or one of tracer.backends.NAMES
    rate: int = 2000                   # drop events per second and CPU (counts stay exact)
    netns: str | None = None           # the namespace whose table is followed (None: ours)
    follow_entries: bool = False       # follow the live table's entries (top, serve)
    entry_events: bool = False         # hand raw insert/delete events to `entry_sink` (capture)
    drop_netns: tuple[str, ...] = ()   # only drops in these namespaces (names or PIDs)
    only_followed_netns: bool = False     # only drops in `netns` (top, capture, serve)
    flt: Filter = field(default_factory=Filter)
    reasons: tuple[str, ...] = ()      # only drops with these reasons
    recent: int = 12                   # latest drops kept for views
    ready_file: str | None = None
    ready_at_open: bool = True         # False: the command calls ready() (capture: after its first record)
    forget_idle: float | None = None   # top: sources idle this long are summed into OTHER (bounded memory)


class TracingSession:
    def __init__(self, what: str, opts: Options, backend=None, names=None):
        """`backend` and `names` (attribution) are made here unless given (tests)."""
        self.what = what
        self.opts = opts
        self.backend = backend
        self.backend_why = "given" if backend is not None else ""
        self.names = names
        self.feed = None                    # LiveSource (the live table's feed) when opts.follow_entries
        self.events = None                  # CtEvents when opts.entry_events
        self.entry_sink = None              # ... each pump's batch of them goes here (live/recorder.py)
        self.inum: int | None = None        # inode of the followed namespace
        self._ns_fd: int | None = None      # the followed namespace, held open (ns.pin)
        self.netns_ref: str | None = None   # how the edges enter it: /proc/self/fd/N
        self.drop_inodes: set[int] = set()
        self.rates = Rates()
        self.recent: deque = deque(maxlen=opts.recent)
        self.counters: Counters | None = None
        self.state: kstats.TableState | None = None
        self.drops_seen = 0                 # drop events that passed the filters
        self._stat_acc = counters.Accumulator()   # the followed table's per-CPU stats, wrap-safe
        self._stat_lock = threading.Lock()  # ... added to by the pump and by serve's scrapes
        self.net_hist: deque = deque(maxlen=30)   # inserts - deletes per second, per interval
        # new entries per interval for the forecast: (seconds, entries, how counted)
        self.ins_hist: deque = deque(maxlen=RATE_INTERVALS)
        # Options.forget_idle: when each source last changed (its inserts,
        # deletes or drops), what the forgotten ones dropped, how many went
        self.last_active: dict[str, float] = {}
        self.forgotten_drops = 0
        self.forgotten_sources = 0
        self._next_forget = 0.0
        self._next_trim = time.monotonic() + TRIM_EVERY
        self._stop = False
        self._old_handlers: dict = {}

    # --- opening and closing -------------------------------------------------
    def __enter__(self) -> "TracingSession":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> "TracingSession":
        o = self.opts
        if self.backend is None and os.geteuid() != 0:
            raise SessionError(f"{self.what} needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): "
                               "run with sudo")
        try:
            if o.netns is not None:
                # Pinned: the namespace stays the one we started with (and
                # alive) if its name is deleted or reused while we trace.
                self._ns_fd = ns.pin(o.netns)
                self.netns_ref = f"/proc/self/fd/{self._ns_fd}"
            self.drop_inodes = {os.stat(ns.resolve(n)).st_ino for n in o.drop_netns}
        except ns.NetnsError as e:
            raise SessionError(str(e)) from None
        if self.backend is None:
            name, self.backend_why = self.choose()
            self.backend = make(name, o.rate)
        # signals first: a SIGTERM while the probes compile (seconds) still
        # ends the session cleanly, once they are attached
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        if self.names is None:
            self.names = Attribution()
            self.names.refresh()
        try:
            if o.follow_entries:      # the first dump is read while the probes compile
                self.feed = LiveSource(self.netns_ref, o.flt.row if o.flt.active else None).start(background=True)
            self.backend.start()
            with ns.entered(self.netns_ref):
                self.inum = ns.inode()
            if self.feed is not None:
                self.feed.wait()
            if o.entry_events:
                self.events = CtEvents(self.netns_ref)
        except (BackendError, ctnetlink.NetlinkError, ns.NetnsError) as e:
            raise SessionError(str(e)) from None
        # the compile's heap and the compiler's code stay resident otherwise
        # (about 140 MB of the process's 196 MB: tracer/kernel/procmem.py)
        self.released = procmem.release_after_compile()
        self.names.start()
        self.sample()
        if o.ready_at_open:
            try:
                self.ready()
            except SessionError:
                self.close()
                raise
        return self

    def ready(self) -> None:
        """Write the ready-file (our PID), if one was asked for: at the end
        of open(), or when the command says so (ready_at_open=False)."""
        if self.opts.ready_file:
            try:
                write_ready_file(self.opts.ready_file)
            except ReadyFileError as e:
                raise SessionError(str(e)) from None

    def choose(self) -> tuple[str, str]:
        """A backend for this kernel: (backend name, why it was chosen)."""
        name, why = choose(features.detect(full=False), self.opts.backend)
        if name is None:
            raise SessionError(why)
        return name, why

    def close(self) -> None:
        """Detach everything, whatever state opening reached. Idempotent."""
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}
        for part in ("feed", "events", "backend"):
            obj = getattr(self, part)
            if obj is not None:
                setattr(self, part, None)
                try:
                    obj.close()
                except Exception:          # the others still get closed
                    pass
        if self.names is not None:
            self.names.stop()
            self.names = None
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    # --- signals ---------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def request_stop(self) -> None:
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    # --- the pump ------------------------------------------------------------
    def wanted(self, d: Drop) -> bool:
        o = self.opts
        if o.only_followed_netns and d.netns != self.inum:
            return False
        if self.drop_inodes and d.netns not in self.drop_inodes:
            return False
        return (not o.reasons or d.reason in o.reasons) and o.flt.drop(d)

    def pump(self, timeout_ms: int = 0) -> list[Drop]:
        """Take in what arrived: drop events (returned, attributed, filtered),
        the live table's events and the raw entry events (to entry_sink)."""
        out = []
        for d in self.backend.poll(timeout_ms):
            if self.wanted(d):
                d.container = self.container_of(d)
                d.dst_container = self.names.destination(d.netns, d.proto, d.dst, d.dport, d.translated)
                self.recent.appendleft(d)
                out.append(d)
        self.drops_seen += len(out)
        if self.feed is not None:
            self.feed.pump()
        if self.events is not None and self.entry_sink is not None:
            # bounded: the loop keeps its schedule; the rest waits in the socket
            self.entry_sink(self.events.poll(0, max_events=ENTRY_BATCH))
        return out

    def wait(self, seconds: float, on_tick=None) -> list[Drop]:
        """Pump every 50 ms for `seconds` (or until stopping, or until
        on_tick() returns True); the drops that arrived."""
        out: list[Drop] = []
        due = time.monotonic() + seconds
        while not self._stop:
            now = time.monotonic()
            if now >= due:
                break
            tick = min(due, now + PUMP_S)
            out += self.pump(0)
            if on_tick is not None and on_tick():
                break
            # one batch per tick, whatever arrives meanwhile: under a flood a
            # poll that returns on the first event would spin
            time.sleep(max(0.0, tick - time.monotonic()))
        return out

    def container_of(self, d: Drop) -> str | None:
        """Who sent the dropped packet: its source address's owner. The
        namespace where it was dropped names it only when that is not the
        followed table's (a node or host drops packets of containers it
        routes: its name is not theirs; an address not known yet gets its
        name later, e.g. in a capture's end record)."""
        n = self.names.ip(d.src)
        if n is not None or d.netns == self.inum:
            return n
        return self.names.netns(d.netns) or self.backend.stats.name(d.netns)

    # --- samples ---------------------------------------------------------------
    def read_table(self) -> kstats.TableState:
        with ns.entered(self.netns_ref):
            return kstats.read()

    def kernel_totals(self, st: kstats.TableState) -> dict[str, int]:
        """The followed table's per-CPU stats summed, monotonic (see
        tracer/core/counters.py), with table_full added."""
        with self._stat_lock:
            self._stat_acc.add(st.cpu)
            totals = self._stat_acc.totals()
        return counters.with_table_full(totals)

    def sample(self) -> dict:
        """Read the exact counters (BPF maps, the kernel's per-CPU stats) and
        fold them into the rates; the interval's rates."""
        self.counters = self.backend.counters()
        self.state = self.read_table()
        live = self.feed.entries if self.feed is not None else None
        prev = self.rates.prev
        drops = Counter(self.counters.drops_by_src(self.inum))
        if self.forgotten_drops:
            drops[OTHER] += self.forgotten_drops
        s = Sample(t=time.monotonic(),
                   inserts=Counter(live.inserts) if live is not None else Counter(),
                   deletes=Counter(live.deletes) if live is not None else Counter(),
                   drops=drops,
                   kernel=self.kernel_totals(self.state), count=self.state.count, max=self.state.max)
        r = self.rates.update(s)
        if r.get("seconds") and live is not None:
            self.net_hist.append(r["table"]["inserts"] - r["table"]["deletes"])
            self.ins_hist.append(self.inserted(prev, s, r["seconds"]))
        if self.opts.forget_idle and live is not None:
            changed = (s.inserts, s.deletes, s.drops) if prev is None else (r["inserts"], r["deletes"], r["drops"])
            for keys in changed:
                for k in keys:
                    self.last_active[k] = s.t
            if s.t >= self._next_forget:
                self._next_forget = s.t + FORGET_EVERY
                self.forget_idle(s.t - self.opts.forget_idle)
        if s.t >= self._next_trim:
            self._next_trim = s.t + TRIM_EVERY
            procmem.trim_heap()
        return r

    def forget_idle(self, before: float) -> list[str]:
        """Sum the sources that last changed before `before` and hold no
        entry into OTHER: their counts (live table, the rates' samples) move
        there, their per-source BPF map entries go (the backend keeps the
        namespace's totals), and every total and rate stays as it was. A
        source seen again counts anew from 0. Returns the sources forgotten."""
        live = self.feed.entries
        held = live.by["src"]
        gone = [k for k, t in self.last_active.items() if t < before and k != OTHER and not held.get(k)]
        if not gone:
            return gone
        final = self.backend.forget_sources(self.inum, set(gone))
        samples = {id(x): x for x in (self.rates.first, self.rates.prev) if x is not None}
        for src in gone:
            del self.last_active[src]
            for c in (live.inserts, live.deletes):
                n = c.pop(src, 0)
                if n:
                    c[OTHER] += n
            self.forgotten_drops += final.get(src, 0)
            for x in samples.values():
                for c in (x.inserts, x.deletes, x.drops):
                    n = c.pop(src, 0)
                    if n:
                        c[OTHER] += n
            n = self.rates.src_drops.pop(src, 0)      # until the next sample's
            if n:
                self.rates.src_drops[OTHER] = self.rates.src_drops.get(OTHER, 0) + n
        self.forgotten_sources += len(gone)
        return gone

    def inserted(self, p: Sample, s: Sample, dt: float) -> tuple[float, float, str]:
        """New entries in the interval p -> s: from NEW events where the
        kernel sends them and none were lost; else the kernel's insert
        counter where it counts (recent kernels leave it at 0); else the
        count's growth plus the entries whose schedule ended meanwhile."""
        src = self.feed
        if src.mode in (1, 2) and not src.overruns_since(p.t):
            # per source: serve forgets idle sources (their counts leave
            # live.inserts), so a source that went down counts anew from 0
            n = sum(v - o if v >= (o := p.inserts.get(k, 0)) else v for k, v in s.inserts.items())
            return dt, float(n), "events"
        k = s.kernel.get("insert", 0) - p.kernel.get("insert", 0)
        if k > 0:
            return dt, float(k), "kernel insert counter"
        sched = src.entries.sched
        gone = sched.expired_between(p.t, s.t) if sched is not None else 0
        return dt, float(max((s.count or 0) - (p.count or 0) + gone, 0)), "count growth"

    def forecast(self, st: kstats.TableState | None = None, now: float | None = None) -> dict:
        """Time to full of the followed table (forecast.live_forecast): its
        expiry schedule from the last dump aged to now, plus the entries
        inserted since, new ones at the insert rate of the last intervals
        (low-high: their spread, at least the Poisson band of their sum)."""
        st = st or self.state
        now = time.monotonic() if now is None else now
        src = self.feed
        sched = src.entries.sched if src is not None else None
        if sched is None or st is None or not self.ins_hist:
            return forecast.live_forecast(None, now, None, None, None)
        # forget only buckets that ended before the last sample: the next
        # interval's count growth adds back what expired since (inserted)
        prev = self.rates.prev
        sched.prune(min(now, prev.t) if prev is not None else now)
        secs = sum(x[0] for x in self.ins_hist)
        n = sum(x[1] for x in self.ins_hist)
        lo, mean, hi = forecast.rate_band([x[1] / x[0] for x in self.ins_hist])
        plo, _, phi = forecast.rate_band(None, count=n, seconds=secs)
        band = (min(lo, plo), n / secs, max(hi, phi))
        how = self.ins_hist[-1][2]
        made = 0
        if how != "events" and st.count is not None:
            # entries the schedule does not know (no NEW events): the count's excess
            made = max(st.count - sum(c for _, c in sched.existing(now)), 0)
        out = forecast.live_forecast(sched, now, st.count, st.max, band, made)
        out["rate_from"] = how
        out["rate_window_s"] = round(secs, 3)
        return out

    def lost(self) -> dict:
        """Everything lost on the way (never silent): shown by every view."""
        c = self.counters
        out = {"events": c.lost, "over_rate_limit": c.over_rate_limit,
               "bpf_map_full": c.keys_full, "missed_probe_runs": c.missed}
        if self.feed is not None:
            out["netlink_overruns"] = self.feed.overruns
        if self.events is not None:
            out["netlink_overruns"] = self.events.overruns
        return out

    # --- the live view's data ----------------------------------------------------
    def live_state(self) -> LiveState:
        """What the live view shows, now (tracer/core/frame.py builds top's
        frame from it)."""
        st = self.state
        return LiveState(
            ts=time.time(), netns=self.inum,
            netns_name=self.names.netns(self.inum) or (self.opts.netns or "current"),
            backend=self.backend.name, blind_spots=self.backend.blind_spots,
            count=st.count, max=st.max, buckets=st.buckets,
            live=self.feed.entries, freshness=self.feed.status(), rates=self.rates,
            reasons=dict(self.counters.reasons_by_netns.get(self.inum, {})),
            lost_events=self.counters.lost, lost=self.lost(), recent=list(self.recent),
            forecast=self.forecast(), names=self.names)
