"""Shared fixtures of the unit tests (no root): a fake backend and fake
names for tracing sessions, a live table feed over a fake dump, fake
events and a fake clock, and the UTC time zone for rendered times."""

import time

import pytest

from tracer.core.events import Counters, SourceCounts
from tracer.kernel.ctevents import EventBatch
from tracer.live import source as livetable
from tracer.live.session import Options, TracingSession


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
        pass

    def close(self):
        self.closed += 1


class FakeNames:
    stopped = False

    def ip(self, a):
        return {"10.0.0.1": "web-1"}.get(a)

    def netns(self, inum):
        return None

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
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
