"""One tracing session: what `drops`, `top`, `capture` and `serve` share.

    with TracingSession("top", Options(table=True, netns=...)) as s:
        while not s.stopping:
            s.wait(interval)          # pump drops and table events every 50 ms
            s.sample()                # the kernel's counters and the probes' maps
            render(s.frame(...))

The session owns, and closes in one place, whatever the command asked for:
the backend (BPF probes), the live table (ctnetlink events, subscribed
before the dump: tracer/livetable.py), container attribution, the signal
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

from tracer.core import forecast
from tracer.kernel import netns as ns
from tracer.kernel import procmem
from tracer.kernel import stats as table
from tracer.core.aggregate import Rates, Sample, top_rows
from tracer.core.events import Counters, Drop
from tracer.core.filters import Filter

PUMP_S = 0.05          # how often events are taken in while waiting
RATE_INTERVALS = 5     # the forecast's insert rate: over the last 5 intervals
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SessionError(Exception):
    """The session cannot start; the message names what is missing and the fix."""


@dataclass
class Options:
    backend: str = "auto"              # auto, or one of tracer.backends.NAMES
    rate: int = 2000                   # drop events per second and CPU (counts stay exact)
    netns: str | None = None           # the namespace whose table is followed (None: ours)
    table: bool = False                # follow the live table (top, serve)
    table_events: bool = False         # hand raw insert/delete events to the command (capture)
    drop_netns: tuple[str, ...] = ()   # only drops in these namespaces (names or PIDs)
    only_table_netns: bool = False     # only drops in `netns` (top, capture, serve)
    flt: Filter = field(default_factory=Filter)
    reasons: tuple[str, ...] = ()      # only drops with these reasons
    recent: int = 12                   # latest drops kept for views
    ready_file: str | None = None


class TracingSession:
    def __init__(self, what: str, opts: Options, backend=None, names=None):
        """`backend` and `names` (attribution) are made here unless given (tests)."""
        self.what = what
        self.opts = opts
        self.backend = backend
        self.backend_why = "given" if backend is not None else ""
        self.names = names
        self.live = None                    # LiveSource when opts.table
        self.events = None                  # CtEvents when opts.table_events
        self.inum: int | None = None        # inode of the followed namespace
        self.drop_inodes: set[int] = set()
        self.rates = Rates()
        self.recent: deque = deque(maxlen=opts.recent)
        self.counters: Counters | None = None
        self.state: table.TableState | None = None
        self.drops_seen = 0                 # drop events that passed the filters
        self._stat_acc: dict = {}           # wrap-safe sums of the followed table's per-CPU stats
        self._stat_lock = threading.Lock()  # ... folded by the pump and by serve's scrapes
        self.net_hist: deque = deque(maxlen=30)   # inserts - deletes per second, per interval
        # new entries per interval for the forecast: (seconds, entries, how counted)
        self.ins_hist: deque = deque(maxlen=RATE_INTERVALS)
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
        from tracer.kernel import ctnetlink
        from tracer.kernel.attribution import Attribution
        from tracer.backends import BackendError, make
        o = self.opts
        if self.backend is None and os.geteuid() != 0:
            raise SessionError(f"{self.what} needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): "
                               "run with sudo")
        try:
            if o.netns is not None:
                ns.resolve(o.netns)
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
            if o.table:      # the first dump is read while the probes compile
                from tracer.live.source import LiveSource
                self.live = LiveSource(o.netns, o.flt.row).start(background=True)
            self.backend.start()
            with ns.entered(o.netns):
                self.inum = ns.inode()
            if self.live is not None:
                self.live.wait()
            if o.table_events:
                from tracer.kernel.ctevents import CtEvents
                self.events = CtEvents(o.netns)
        except (BackendError, ctnetlink.NetlinkError, ns.NetnsError) as e:
            raise SessionError(str(e)) from None
        # the compile's heap and the compiler's code stay resident otherwise
        # (about 140 MB of the process's 196 MB: tracer/kernel/procmem.py)
        self.released = procmem.release_after_compile()
        self.names.start()
        self.sample()
        if o.ready_file:
            with open(o.ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        return self

    def choose(self) -> tuple[str, str]:
        """A backend for this kernel: (backend name, why it was chosen)."""
        from tracer.kernel import features
        from tracer.backends import choose
        name, why = choose(features.detect(full=False), self.opts.backend)
        if name is None:
            raise SessionError(why)
        return name, why

    def close(self) -> None:
        """Detach everything, whatever state opening reached. Idempotent."""
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}
        for part in ("live", "events", "backend"):
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
        if o.only_table_netns and d.netns != self.inum:
            return False
        if self.drop_inodes and d.netns not in self.drop_inodes:
            return False
        return (not o.reasons or d.reason in o.reasons) and o.flt.drop(d)

    def pump(self, timeout_ms: int = 0) -> list[Drop]:
        """Take in what arrived: drop events (returned, attributed, filtered)
        and the live table's events."""
        out = []
        for d in self.backend.poll(timeout_ms):
            if self.wanted(d):
                d.container = self.container_of(d)
                self.recent.appendleft(d)
                out.append(d)
        self.drops_seen += len(out)
        if self.live is not None:
            self.live.pump()
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
        return self.names.ip(d.src) or self.names.netns(d.netns) or \
            self.backend.stats.name(d.netns)

    # --- samples ---------------------------------------------------------------
    def read_table(self) -> table.TableState:
        with ns.entered(self.opts.netns):
            return table.read()

    def kernel_totals(self, st: table.TableState) -> dict[str, int]:
        """The followed table's per-CPU stats summed, monotonic (each CPU's
        32-bit counter accumulated modulo 2**32: a wrap is not a reset), with
        table_full = drop - insert_failed (a clash at confirm counts in both)."""
        from tracer.backends.tracepoint import fold
        out: dict[str, int] = {}
        with self._stat_lock:
            fold(self._stat_acc, st.cpu)
            for (cpu, stat), (raw, total) in self._stat_acc.items():
                out[stat] = out.get(stat, 0) + total
        out["table_full"] = max(out.get("drop", 0) - out.get("insert_failed", 0), 0)
        return out

    def sample(self) -> dict:
        """Read the exact counters (BPF maps, the kernel's per-CPU stats) and
        fold them into the rates; the interval's rates."""
        self.counters = self.backend.counters()
        self.state = self.read_table()
        live = self.live.live if self.live is not None else None
        prev = self.rates.prev
        s = Sample(t=time.monotonic(),
                   inserts=Counter(live.inserts) if live is not None else Counter(),
                   deletes=Counter(live.deletes) if live is not None else Counter(),
                   drops=Counter(self.counters.drops_by_src(self.inum)),
                   kernel=self.kernel_totals(self.state), count=self.state.count, max=self.state.max)
        r = self.rates.update(s)
        if r.get("seconds") and live is not None:
            self.net_hist.append(r["table"]["inserts"] - r["table"]["deletes"])
            self.ins_hist.append(self._inserted(prev, s, r["seconds"]))
        return r

    def _inserted(self, p: Sample, s: Sample, dt: float) -> tuple[float, float, str]:
        """New entries in the interval p -> s: from NEW events where the
        kernel sends them and none were lost; else the kernel's insert
        counter where it counts (recent kernels leave it at 0); else the
        count's growth plus the entries whose schedule ended meanwhile."""
        src = self.live
        if src.mode in (1, 2) and not src.overruns_since(p.t):
            # per source: serve forgets idle sources (their counts leave
            # live.inserts), so a source that went down counts anew from 0
            n = sum(v - o if v >= (o := p.inserts.get(k, 0)) else v for k, v in s.inserts.items())
            return dt, float(n), "events"
        k = s.kernel.get("insert", 0) - p.kernel.get("insert", 0)
        if k > 0:
            return dt, float(k), "kernel insert counter"
        sched = src.live.sched
        gone = sched.expired_between(p.t, s.t) if sched is not None else 0
        return dt, float(max((s.count or 0) - (p.count or 0) + gone, 0)), "count growth"

    def forecast(self, st: table.TableState | None = None, now: float | None = None) -> dict:
        """Time to full of the followed table (forecast.live_forecast): its
        expiry schedule from the last dump aged to now, plus the entries
        inserted since, new ones at the insert rate of the last intervals
        (low-high: their spread, at least the Poisson band of their sum)."""
        st = st or self.state
        now = time.monotonic() if now is None else now
        src = self.live
        sched = src.live.sched if src is not None else None
        if sched is None or st is None or not self.ins_hist:
            return forecast.live_forecast(None, now, None, None, None)
        # forget only buckets that ended before the last sample: the next
        # interval's count growth adds back what expired since (_inserted)
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
        if self.live is not None:
            out["netlink_overruns"] = self.live.overruns
        if self.events is not None:
            out["netlink_overruns"] = self.events.overruns
        return out

    # --- the live view's data ----------------------------------------------------
    def frame(self, group: str, sort: str, n: int, paused: bool = False) -> dict:
        """Everything `top` shows (and `top --json` prints), from the state."""
        r = self.rates.last
        st = self.state
        t = r.get("table", {})
        live = self.live.live
        name_of = self.names.ip
        rows = top_rows(live, r, group, sort, n, name_of)
        src_rows = rows if group == "src" else top_rows(live, r, "src", "entries", n, name_of)
        tot = self.rates.totals
        return {
            "ts": time.time(), "netns": self.inum,
            "netns_name": self.names.netns(self.inum) or (self.opts.netns or "current"),
            "backend": self.backend.name, "blind_spots": self.backend.blind_spots,
            "count": st.count, "max": st.max, "buckets": st.buckets, "tracked": len(live),
            "freshness": self.live.status(),
            "interval": r.get("seconds", 0.0),
            "rates": {"inserts": t.get("inserts", 0.0), "deletes": t.get("deletes", 0.0),
                      "drops": t.get("table_full", 0.0), "table_full": t.get("table_full", 0.0),
                      "early_drops": t.get("early_drop", 0.0),
                      "insert_failed": t.get("insert_failed", 0.0), "invalid": t.get("invalid", 0.0)},
            "group": group, "sort": sort, "paused": paused,
            "top": [{**x, "key": str(x["key"])} for x in rows],
            "top_sources": [{"src": x["key"], "entries": x["entries"],
                             "inserts_per_s": x["inserts_per_s"], "deletes_per_s": x["deletes_per_s"],
                             "drops_per_s": x["drops_per_s"], "drops_total": x["drops_total"],
                             "container": x["container"]}
                            for x in src_rows],
            # exact, since the session started: the kernel's counters and the probes' maps
            "totals": {"table_full": tot["table_full"], "early_drops": tot["early_drop"],
                       "insert_failed": tot["insert_failed"],
                       "inserts": tot["inserts"], "deletes": tot["deletes"]},
            "drops": [d.to_dict() for d in list(self.recent)[:8]],
            "lost": self.lost(),
            "history": {"fill": list(self.rates.fill_hist), "drops": list(self.rates.drop_hist)},
            "forecast": self.forecast(),
        }
