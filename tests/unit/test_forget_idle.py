"""`top` forgets idle sources (Options.forget_idle, as serve does) so that a
long run under source churn stays bounded: a real TracingSession over a
fake backend and a fake live-table feed with events. Sources without
entries and unchanged for the idle time are summed into "other"; every
total, the since-start drops and the next interval's rates stay exact."""

import socket

from tracer.core.events import Counters, SourceCounts
from tracer.core.frame import top_frame
from tracer.kernel.ctevents import DELETE, INSERT
from tracer.kernel.stats import TableState
from tracer.core.aggregate import OTHER
from tracer.live.session import FORGET_EVERY, TracingSession

NETNS = 7


def row(src, sport):
    return (17, None, socket.inet_aton(src), socket.inet_aton("198.18.1.1"), 53, 0, (0, 0), sport, None, 30)


class Backend:
    """Per-source drops the test sets; forget_sources() removes them (as the
    BPF maps' entries go) and returns what each had."""
    name, blind_spots = "fake", "none"

    def __init__(self):
        self.drops: dict[str, int] = {}
        self.forgot: list[set] = []

    def start(self):
        return self

    def poll(self, timeout_ms=0):
        return []

    def counters(self):
        return Counters(backend="fake", sources=[SourceCounts(NETNS, s, table_full=n)
                                                 for s, n in self.drops.items()])

    def forget_sources(self, netns, srcs):
        assert netns == NETNS
        self.forgot.append(set(srcs))
        return {s: self.drops.pop(s) for s in srcs if s in self.drops}

    def close(self):
        pass


def test_idle_sources_are_summed_into_other_and_every_total_stays(make_session, live_feed, monkeypatch):
    feed, _, ev = live_feed(1, [row("198.18.0.9", 100 + i) for i in range(10)])
    churn = [f"10.1.0.{i}" for i in range(1, 101)]
    be = Backend()
    be.drops = {src: 2 for src in churn[:5]} | {"198.18.0.9": 1}
    now = [100.0]
    monkeypatch.setattr("tracer.live.session.time.monotonic", lambda: now[0])
    monkeypatch.setattr(TracingSession, "read_table",
                        lambda self: TableState(count=10, max=100, buckets=64, cpu=[{"cpu": 0, "drop": 11}]))
    with make_session(be, only_followed_netns=True, forget_idle=600.0) as s:
        # its first sample was of our own namespace: every drop of NETNS counts since then
        s.feed, s.inum = feed, NETNS
        live = feed.entries
        # 100 sources come and go in the next interval; five of them drop a packet more
        ev.queue = [(k, row(src, 2000)) for src in churn for k in (INSERT, DELETE)]
        for src in churn[:5]:
            be.drops[src] += 1
        now[0] += 1.0
        s.pump()
        s.sample()
        totals, since = dict(s.rates.totals), dict(s.rates.src_drops)
        assert totals["inserts"] == totals["deletes"] == 100 and since == {src: 3 for src in churn[:5]} | {"198.18.0.9": 1}
        # 600 s quiet (the held source's entries stay): forgotten at the next look
        now[0] += 600.0 + FORGET_EVERY
        s.sample()
        assert be.forgot == [set(churn)]                   # never the source holding entries
        assert s.forgotten_sources == 100 and s.forgotten_drops == 15
        assert not set(churn) & (set(live.inserts) | set(live.deletes) | set(s.last_active))
        assert live.inserts[OTHER] == live.deletes[OTHER] == 100
        assert s.rates.totals == totals and s.rates.src_drops == {OTHER: 15, "198.18.0.9": 1}
        f = top_frame(s.live_state(), "src", "entries", 10)
        assert f["drops_by_source"] == [{"src": OTHER, "container": None, "drops": 15},
                                       {"src": "198.18.0.9", "container": None, "drops": 1}]
        assert f["totals"]["inserts"] == 100
        # the next interval: no rate out of the folding, the same totals
        now[0] += 1.0
        r = s.sample()
        assert r["inserts"] == r["deletes"] == r["drops"] == {} and r["table"]["inserts"] == 0
        assert s.rates.totals == totals and s.rates.src_drops == {OTHER: 15, "198.18.0.9": 1}
        # a forgotten source seen again counts anew; the totals go on
        ev.queue = [(INSERT, row(churn[0], 4000))]
        be.drops[churn[0]] = 2
        now[0] += 1.0
        s.pump()
        r = s.sample()
        assert r["inserts"] == {churn[0]: 1.0} and r["drops"] == {churn[0]: 2.0}
        assert s.rates.totals["inserts"] == 101 and s.rates.src_drops == {OTHER: 15, "198.18.0.9": 1, churn[0]: 2}
