"""The live forecast of `top` and `serve` with a fake clock: the expiry
schedule kept per dump (counts, nothing per entry), aged by the time since
the dump, merged with the entries inserted since (events), the reconcile's
hand-over, and the time to full it gives against the truth computed here
from the same entries."""

import socket

import pytest

from tracer.core import forecast as F
from tracer.core.aggregate import LiveTable
from tracer.core.conntrack import F_UNREPLIED
from tracer.live.session import Options, TracingSession
from tracer.kernel.stats import TableState

DST = socket.inet_aton("198.18.1.1")


def udp(n, timeout, src="198.18.0.1", first=1000):
    s = socket.inet_aton(src)
    return [(17, None, s, DST, 53, F_UNREPLIED, (0, 0), first + i, None, timeout) for i in range(n)]


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def truth(expiries: list[float], now: float, rate: float, life: float, limit: int):
    """First s >= 0 (0.01 s steps) when the entries alive at now + s (each
    expiring at its time; `rate` new ones a second living `life`) reach limit."""
    s = 0.0
    while s < 1000:
        if sum(1 for e in expiries if e > now + s) + rate * min(s, life) >= limit:
            return s
        s += 0.01
    return None


def test_buckets_bound_the_schedule():
    assert [F.bucket(x) for x in (0, 599, 600, 609, 3599, 3600, 86399, 86400, 432000)] == \
        [0, 599, 600, 600, 3590, 3600, 86340, 86400, 432000]
    s = F.Schedule(0.0)
    # 432,000 entries, each with its own remaining timeout: a few thousand keys
    s.rows([(6, 3, b"a", b"b", 1, 0, (0, 0), 1, None, t) for t in range(432000)], 0.0)
    s.end(0.0)
    assert s.dumped == 432000 and sum(s.counts.values()) == 432000
    assert len(s.counts) < 600 + 300 + 1380 + 580


def test_schedule_ages_and_merges_inserts():
    s = F.Schedule(100.0, {"udp_timeout": 30})
    s.rows(udp(300, 20), 100.0)                  # read at the dump's start: expire at 120-121
    s.rows(udp(500, 8, first=5000), 102.0)       # read 2 s later: expire at 110-111
    s.end(102.0)
    s.inserted(udp(1, 30, first=9000)[0], 105.0)   # a NEW event at 105: expires at 135
    assert s.dumped == 800 and s.inserted_n == 1
    ex = s.existing(104.0)
    assert sum(n for _, n in ex) == 801
    # each batch counts from when it was read; a bucket's middle: +-0.5 s
    assert {n: t for t, n in ex} == {500: pytest.approx(6.5, abs=0.51), 300: pytest.approx(16.5, abs=0.51),
                                     1: pytest.approx(31.5, abs=0.51)}
    assert sum(n for _, n in s.existing(112.0)) == 301      # the 500 are gone
    assert sum(n for _, n in s.existing(122.0)) == 1
    assert s.existing(136.0) == []
    assert s.expired_between(104.0, 112.0) == 500
    assert s.by_kind(104.0) == {"udp/UNREPLIED": {"10s": 500, "1m": 801, "10m": 801, "total": 801}}
    assert s.new_kind() == ("udp/UNREPLIED", 30)
    s.prune(200.0)
    assert not s.counts


def test_live_table_counts_each_entry_once_per_schedule():
    clock = Clock(100.0)
    t = LiveTable()
    t.clock = clock
    t.sysctls = {"udp_timeout": 30}
    dumped = udp(100, 20)
    t.fill([dumped[:50], dumped[50:]])
    assert t.sched.dumped == 100 and t.sched.done == 100.0
    clock.t = 101.0
    t.insert(dumped[0][:9] + (30,))              # a NEW event of a dumped entry (queued during the dump)
    fresh = udp(10, 30, first=7000)
    for r in fresh:
        t.insert(r)
    assert t.sched.inserted_n == 0               # counted once per batch of events
    t.sched_flush()
    assert t.sched.inserted_n == 10 and sum(n for _, n in t.sched.existing(101.0)) == 110
    # a reconcile: an UPDATE reaches an entry before the dump does, a NEW
    # event adds one; the dump then shows both: each is counted once
    clock.t = 110.0
    t.begin()
    t.update(dumped[1][:9] + (30,))
    t.insert(udp(1, 30, first=8000)[0])
    t.sched_flush()
    old = t.sched
    assert old.inserted_n == 11                  # the new entry also joins the current schedule
    for r in dumped + fresh + udp(1, 29, first=8000):
        t.seen(r)
    t.sweep()
    assert t.sched is not old and t.sched.t0 == 110.0
    assert t.sched.dumped == 109 and t.sched.inserted_n == 2
    assert sum(n for _, n in t.sched.existing(110.5)) == len(t) == 111


def test_feed_refreshes_an_old_schedule(live_feed, fake_reader):
    src, clock, ev = live_feed(1, [])
    assert src.entries.sched.dumped == 0
    new = udp(5, 30, first=3000)
    ev.queue = [("insert", r) for r in new]
    src.pump()
    assert src.entries.sched.inserted_n == 5
    clock.t += 299
    src.pump()
    assert fake_reader.dumps == 1                    # events exact: no reconcile yet
    fake_reader.table = new
    clock.t += 2
    src.pump()                                   # schedule 301 s old: one dump refreshes it
    src.pump()
    assert fake_reader.dumps == 2 and src.entries.sched.t0 == clock.t and src.entries.sched.dumped == 5
    assert src.swept == 0 and len(src.entries) == 5


def _session(sched, count, limit, hist, mode=2):
    s = TracingSession("top", Options())

    class Src:
        pass
    src = Src()
    src.mode = mode
    src.entries = type("L", (), {"sched": sched, "dnat": {}})()
    src.overruns_since = lambda t: False
    s.feed = src
    s.state = TableState(count=count, max=limit)
    s.ins_hist.extend(hist)
    return s


def test_time_to_full_and_not_filling_against_the_truth():
    # 3,000 entries that expire 8 s from now, a generator at 200/s whose
    # entries live 30 s: a straight line from the count (3,000 rising
    # 200/s) says full in 10 s at 5,000; the table is full only at 25 s.
    # At 7,800 it levels at 6,000: not filling, where a line says 24 s.
    sched = F.Schedule(0.0, {"udp_timeout": 30})
    sched.rows(udp(3000, 8), 0.0)
    sched.end(0.0)
    sched.inserted(udp(1, 30, first=9000)[0], 0.0)
    now = 0.0
    hist = [(1.0, 195.0, "events"), (1.0, 205.0, "events"), (1.0, 200.0, "events")]
    expiries = [8.5] * 3000 + [30.5]
    f = _session(sched, 3001, 5000, hist).forecast(now=now)
    want = truth(expiries, now, 200.0, 30, 5000)
    assert want == pytest.approx(25.0, abs=0.1)
    assert f["filling"] and f["low"] <= want <= f["high"], f
    assert f["seconds"] == pytest.approx(want, abs=0.1)
    assert f["rate"] == 200.0 and f["rate_low"] < 195.0 and f["rate_high"] > 205.0   # Poisson floor
    assert f["model"] == "expiry schedule" and f["new_kind"] == "udp/UNREPLIED" and f["life"] == 30
    assert f["alive"] == 3001 and f["unexplained"] == 0 and f["expiring"]["10s"] == 3000
    assert F.from_net(3001, 5000, [200.0, 200.0])["seconds"] == pytest.approx(10.0, abs=0.1)
    g = _session(sched, 3001, 7800, hist).forecast(now=now)
    assert truth(expiries, now, 200.0, 30, 7800) is None
    assert g["filling"] is False and g["steady"] == 6000
    assert F.text(g).startswith("not filling (levels at ~6,000)")
    # 5 s later, with the generator's 1,000 entries since (NEW events), the
    # aged schedule gives the same moment
    for i in range(1000):
        sched.inserted(udp(1, 30, first=10000 + i)[0], i / 200)
    h = _session(sched, 4001, 5000, hist).forecast(now=5.0)
    assert h["seconds"] == pytest.approx(want - 5.0, abs=0.1) and h["schedule_age_s"] == 5.0
    assert _session(None, 1, 5000, hist).forecast(now=0.0)["filling"] is None


def test_events_off_counts_the_growth():
    # no NEW events: the count's excess over the schedule is taken as new
    # entries made evenly since the dump, living the new kind's timeout
    sched = F.Schedule(0.0, {"udp_timeout": 30})
    sched.rows(udp(1000, 25), 0.0)
    sched.end(0.0)
    hist = [(1.0, 100.0, "count growth")] * 3
    s = _session(sched, 2000, 10**6, hist, mode=0)
    f = s.forecast(now=10.0)
    assert f["made"] == 1000 and f["unexplained"] == 0 and f["filling"] is False
    assert f["steady"] == 3000 and f["rate_from"] == "count growth"
    # the interval's inserts: the count's growth plus what the schedule let expire
    from tracer.core.aggregate import Sample
    p = Sample(t=20.0, inserts={}, deletes={}, drops={}, kernel={}, count=2000, max=None)
    q = Sample(t=30.0, inserts={}, deletes={}, drops={}, kernel={}, count=1500, max=None)
    assert s.inserted(p, q, 10.0) == (10.0, 500.0, "count growth")   # 1,000 expired at ~25.5 s


def test_top_header_shows_the_band_and_the_schedule_age():
    import copy

    from rich.console import Console

    from tests.unit.test_views_top import FRAME
    from tracer.views.top import render
    sched = F.Schedule(0.0, {"udp_timeout": 30})
    sched.rows(udp(3000, 8), 0.0)
    sched.end(0.0)
    f = copy.deepcopy(FRAME)
    f["forecast"] = F.live_forecast(sched, 12.0, 3000, 5000, (190.0, 200.0, 210.0))
    c = Console(record=True, width=100)
    c.print(render(f, full_screen=False))
    # 3,000 gone at 8.5 s: 5,000 new entries at 200/s (190-210) = 25 s (24-26)
    assert "full in ~25s (24s-26s), schedule 12s old" in c.export_text()
    f["forecast"] = F.live_forecast(sched, 12.0, 3000, 7800, (190.0, 200.0, 210.0))
    c = Console(record=True, width=100)
    c.print(render(f, full_screen=False))
    assert "not filling (levels at ~6,000), schedule 12s old" in c.export_text()


def test_folded_sources_do_not_make_the_insert_rate_negative():
    # serve folds an idle source right after a sample (its cumulative
    # inserts leave live.inserts): the next interval counts only what was
    # inserted, and the forecast (its Poisson band) does not fail
    from collections import Counter

    from tracer.core.aggregate import Sample
    sched = F.Schedule(0.0, {"udp_timeout": 30})
    sched.rows(udp(100, 20), 0.0)
    sched.end(0.0)
    s = _session(sched, 100, 10000, [])
    p = Sample(t=10.0, inserts=Counter({"a": 5000, "b": 10, "c": 7}), deletes=Counter(), drops={},
               kernel={}, count=100, max=10000)
    q = Sample(t=20.0, inserts=Counter({"b": 30, "c": 3}), deletes=Counter(), drops={},
               kernel={}, count=100, max=10000)
    assert s.inserted(p, q, 10.0) == (10.0, 23.0, "events")     # b +20, c folded then +3
    s.ins_hist.append(s.inserted(p, q, 10.0))
    f = s.forecast(now=20.0)
    assert f["rate"] == pytest.approx(2.3) and f["rate_low"] >= 0


def test_a_scrape_between_samples_keeps_what_the_next_interval_counts():
    # events off: an interval's inserts are the count's growth plus what the
    # schedule let expire in it; a forecast read between two samples (a
    # serve scrape, a key in top) must not forget those expiries
    from tracer.core.aggregate import Sample
    sched = F.Schedule(0.0, {"udp_timeout": 30})
    sched.rows(udp(1000, 15), 0.0)               # expire at ~15.5 s
    sched.end(0.0)
    s = _session(sched, 1000, 10**6, [(1.0, 0.0, "count growth")], mode=0)
    p = Sample(t=10.0, inserts={}, deletes={}, drops={}, kernel={}, count=1000, max=None)
    s.rates.prev = p
    s.forecast(now=17.0)                         # a scrape at 17 s
    q = Sample(t=20.0, inserts={}, deletes={}, drops={}, kernel={}, count=1000, max=None)
    assert s.inserted(p, q, 10.0) == (10.0, 1000.0, "count growth")


def test_serve_forecast_gauges():
    # the exposition text: +Inf spelled as Prometheus reads it when not
    # filling, NaN (documented) before the first interval, and the schedule's
    # age as soon as a dump is in, absent before (never NaN)
    import threading

    from prometheus_client import CollectorRegistry, generate_latest

    from tracer.core.events import Counters
    from tracer.live.exporter import Collector, SourceSeries

    def scrape(s):
        s.read_table = lambda: s.state
        s.kernel_totals = lambda st: {}
        s.backend = type("B", (), {"counters": staticmethod(lambda: Counters("fake")), "name": "fake"})()
        s.lost = lambda: {"events": 0, "over_rate_limit": 0, "bpf_map_full": 0}
        s.names = type("N", (), {"ip": staticmethod(lambda a: None), "meta": staticmethod(lambda n: {})})()
        s.inum = 1
        s.feed.clock = lambda: t0 + 10.0
        s.feed.entries.by = {"src": {}}
        s.feed.dumps, s.feed.dump_seconds = {}, 0.0      # no reconcile dump yet
        reg = CollectorRegistry()
        reg.register(Collector(s, SourceSeries(), threading.Lock(), "6.18"))
        return generate_latest(reg).decode()

    import time
    t0 = time.monotonic() - 10.0                 # the forecast reads the session's clock
    sched = F.Schedule(t0, {"udp_timeout": 30})
    sched.rows(udp(3000, 20), t0)
    sched.end(t0)
    s = _session(sched, 3000, 10**6, [])
    out = scrape(s)
    assert "cttrace_conntrack_seconds_to_full NaN" in out
    assert "cttrace_conntrack_forecast_schedule_age_seconds 10.0" in out
    s.ins_hist.append((1.0, 10.0, "events"))
    out = scrape(s)
    samples = [x for x in out.splitlines() if not x.startswith("#")]
    assert "cttrace_conntrack_seconds_to_full +Inf" in samples
    assert not [x for x in samples if x.lower().endswith(("nan", " inf"))]
    s = _session(None, 3000, 10**6, [(1.0, 10.0, "events")])
    assert "schedule_age" not in scrape(s)
