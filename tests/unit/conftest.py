"""Shared fixtures of the unit tests (no root): a fake backend and fake
names for tracing sessions, a live table feed over a fake dump, fake
events and a fake clock, and the UTC time zone for rendered times."""

import socket
import time

import pytest

from tracer.core.events import Counters, Drop, SourceCounts
from tracer.core.frame import top_frame
from tracer.kernel.attribution import Names
from tracer.kernel.ctevents import EventBatch
from tracer.live import source as livetable
from tracer.live.session import Options, TracingSession
from tracer.kernel.stats import TableState


class FakeStats:
    def name(self, inum):
        return {42: "netns-42"}.get(inum)


class FakeBackend:
    """A backend that hands out the given batches of drops, one per poll."""
    name = "fake"
    blind_spots = "none"

    def __init__(self, batches=(), fail=None, counters=None):
        self.batches = list(batches)
        self.fail = fail
        self.started = self.closed = 0
        self.stats = FakeStats()
        self.on_poll = None
        self._counters = counters or Counters(backend="fake",
                                              sources=[SourceCounts(1, "10.0.0.1", table_full=3)])

    def start(self):
        if self.fail:
            from tracer.backends import BackendError
            raise BackendError(self.fail)
        self.started += 1
        return self

    def poll(self, timeout_ms=0):
        if self.on_poll:
            self.on_poll()
        return self.batches.pop(0) if self.batches else []

    def counters(self):
        return self._counters

    def forget_sources(self, netns, srcs):
        return {}

    def close(self):
        self.closed += 1


class FakeNames:
    """Attribution's interface: 10.0.0.1 is web-1 from the start; `late`
    names become known at the next refresh()."""
    stopped = False

    def __init__(self, late=None):
        self.names = Names(by_ip={"10.0.0.1": "web-1"})
        self.late = dict(late or {})

    def ip(self, a):
        return self.names.by_ip.get(a)

    def netns(self, inum):
        return None

    def destination(self, netns, proto, dst, dport, translated=None):
        return {("tcp", 8080): "web-2"}.get((proto, dport))

    def refresh(self):
        self.names.by_ip.update(self.late)

    def start(self):
        return self

    def stop(self):
        self.stopped = True


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeEvents:
    """ctnetlink events: whatever the test queues."""

    def __init__(self):
        self.queue: list = []
        self.overrun = False

    def poll(self, timeout=0, max_events=None):
        n = len(self.queue) if max_events is None else max_events
        b = EventBatch(events=self.queue[:n], overrun=self.overrun, more=len(self.queue) > n)
        del self.queue[:n]
        self.overrun = False
        return b

    def close(self):
        pass


class FakeReader:
    """A ctnetlink dump of `FakeReader.table`, counted in `dumps`."""
    table: list = []
    dumps = 0

    def __init__(self):
        self.rows = list(FakeReader.table)
        FakeReader.dumps += 1
        self.count = 0

    @property
    def done(self):
        return not self.rows

    def read(self, n):
        out, self.rows = self.rows[:n], self.rows[n:]
        return out

    def close(self):
        pass


@pytest.fixture
def fake_backend():
    return FakeBackend


@pytest.fixture
def fake_names():
    return FakeNames()


@pytest.fixture
def make_session(fake_names):
    """make_session(backend, **options): a TracingSession with fake names."""
    def make(backend=None, **kw):
        return TracingSession("test", Options(**kw), backend=backend or FakeBackend(), names=fake_names)
    return make


@pytest.fixture
def live_feed(monkeypatch):
    """live_feed(mode, rows) -> (LiveSource, clock, events): the live table
    feed over a fake dump of `rows` (FakeReader), fake events in ctnetlink
    events mode `mode` (0 off, 1 on, 2 auto) and a fake clock."""
    def make(mode, table):
        clock, ev = Clock(), FakeEvents()
        FakeReader.table, FakeReader.dumps = table, 0
        monkeypatch.setattr(livetable, "events_mode", lambda: mode)
        monkeypatch.setattr(livetable, "CtEvents", lambda *a, **k: ev)
        monkeypatch.setattr(livetable.ctnetlink, "DumpReader", FakeReader)

        def dump(sink):
            r = FakeReader()
            while not r.done:
                sink(r.read(7))
        monkeypatch.setattr(livetable.ctnetlink, "dump", dump)
        return livetable.LiveSource(None, clock=clock).start(), clock, ev
    return make


@pytest.fixture
def fake_reader():
    return FakeReader


@pytest.fixture
def fake_events():
    return FakeEvents


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def session_frame(make_session, fake_backend, live_feed, monkeypatch):
    """session_frame() -> top's frame (tracer/core/frame.top_frame) of a real
    TracingSession's live_state(): a fake backend's
    exact counts (4 table-full drops of 198.18.0.1, one drop event), a live
    table feed over a fake dump (30 entries of 198.18.0.1, 10 of
    198.18.0.2), two samples of the kernel's per-CPU counters a second
    apart (drop +3 +2, insert_failed +1)."""
    def rows(n, src):
        s = socket.inet_aton(src)
        return [(17, None, s, socket.inet_aton("198.18.1.1"), 53, 0, (0, 0), 1000 + i, None, 30)
                for i in range(n)]

    def make(events_mode=0):
        counts = Counters(backend="fake", sources=[SourceCounts(7, "198.18.0.1", table_full=4)])
        drop = Drop(ts=1700000000.0, netns=7, cpu=0, family="ipv4", proto="udp", src="198.18.0.1",
                    sport=1000, dst="198.18.1.1", dport=53, reason="table_full", ct_attached=False)
        be = fake_backend([[drop]], counters=counts)
        feed, clock, _ = live_feed(events_mode, rows(30, "198.18.0.1") + rows(10, "198.18.0.2"))
        before = [{"cpu": 0, "drop": 10, "insert_failed": 1}, {"cpu": 1, "drop": 5}]
        readings = iter([                                # at open(), then two samples a second apart
            TableState(count=40, max=100, buckets=64, cpu=before),
            TableState(count=40, max=100, buckets=64, cpu=before),
            TableState(count=40, max=100, buckets=64, cpu=[{"cpu": 0, "drop": 13, "insert_failed": 2},
                                                           {"cpu": 1, "drop": 7}]),
        ])
        now = [100.0]
        monkeypatch.setattr("tracer.live.session.time.monotonic", lambda: now[0])
        monkeypatch.setattr(TracingSession, "read_table", lambda self: next(readings))
        with make_session(be, only_followed_netns=True) as s:
            s.feed, s.inum = feed, 7
            s.pump()
            s.sample()
            now[0] += 1.0
            s.sample()
            return top_frame(s.live_state(), "src", "entries", 10)
    return make
