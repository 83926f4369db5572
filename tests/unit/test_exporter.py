"""serve's exporter without root: label values that cannot be encoded,
scrapes that never hold the pump loop's lock while they read the kernel,
and the bounded HTTP server (deadlines, a full queue, paths)."""

import re
import socket
import threading
import time
from collections import Counter
from types import SimpleNamespace

from prometheus_client import generate_latest

from tracer.core.events import Counters, SourceCounts
from tracer.kernel.stats import TableState
from tracer.live.exporter import (FAMILIES, Collector, DestinationDrops, SourceSeries, label_value,
                                  registry_for, update_series)
from tracer.live.httpd import MetricsServer


def fake_session(lock: threading.Lock, name: str | None = None, held: list | None = None):
    """A session as the collector sees it; `held` records whether the pump
    lock was held whenever the kernel was read."""
    def read_table():
        if held is not None:
            held.append(lock.locked())
        return TableState(count=3, max=100, buckets=16)

    entries = SimpleNamespace(by={"src": Counter({"10.0.0.1": 2, "10.0.0.2": 1})}, sched=None,
                              dnat=Counter({"10.0.0.9": 4}))
    s = SimpleNamespace(
        read_table=read_table, kernel_totals=lambda st: {"drop": 5, "insert_failed": 1, "table_full": 4},
        counters=Counters("fake"), backend=SimpleNamespace(name="fake", counters=lambda: Counters("fake")),
        lost=lambda: {"events": 0, "over_rate_limit": 0, "bpf_map_full": 0}, inum=7,
        feed=SimpleNamespace(entries=entries, clock=time.monotonic, dumps=Counter(events_lost=1), dump_seconds=4.0),
        rates=SimpleNamespace(prev=None), forecast=lambda st: {"filling": None},
        names=SimpleNamespace(ip=lambda a: name, meta=lambda n: {}))
    return s


def scrape(s, lock, series=None) -> str:
    series = series or SourceSeries(k=5)
    series.update(0.0, {"10.0.0.1": {"inserts": 2, "deletes": 0, "drops": 0}}, {"10.0.0.1": 2})
    return generate_latest(registry_for(Collector(s, series, lock, "6.18"))).decode()


def test_a_name_that_is_not_utf8_does_not_fail_the_scrape():
    lock = threading.Lock()
    bad = "pod-\udcff\udcfe" + "x" * 1000            # os.fsdecode of bytes that are not UTF-8, and long
    text = scrape(fake_session(lock, bad), lock)
    line = next(ln for ln in text.splitlines() if ln.startswith("cttrace_source_entries{") and "10.0.0.1" in ln)
    assert "pod-\\\\udcff\\\\udcfe" in line and len(line) < 400
    assert label_value(None) == "" and label_value("é") == "é"


def test_a_scrape_reads_the_kernel_without_the_pump_lock():
    lock = threading.Lock()
    held: list = []
    scrape(fake_session(lock, held=held), lock)
    assert held == [False]


def test_every_family_is_declared_once_and_shown():
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    lock = threading.Lock()
    text = scrape(fake_session(lock), lock)
    for f in FAMILIES:
        # absent before a dump, and before a drop sent to a published port
        if f.name not in ("cttrace_conntrack_forecast_schedule_age_seconds", "cttrace_destination_drops"):
            assert re.search(rf"^# TYPE {f.name}(_total)? ", text, re.M), f.name
    assert "process_resident_memory_bytes" in text


def test_destination_drops_by_published_port_bounded():
    """Drops sent to a published port count for its container (labels
    destination proto/port, container, namespace, pod); K pairs at most,
    the rest in destination="other"; drops without one are not counted."""
    lock = threading.Lock()
    s = fake_session(lock)
    s.names.meta = lambda n: {"namespace": "shop", "pod": "api-0", "container": "api"} if n == "shop/api-0" else {}
    dd = DestinationDrops(k=2)
    mk = lambda port, who: SimpleNamespace(proto="udp", dport=port, dst_container=who)  # noqa: E731
    dd.add([mk(18080, "d-pub")] * 5 + [mk(53, "shop/api-0")] * 2 + [mk(1, None)] * 9 + [mk(9, "x")] * 3)
    dd.add([mk(18080, "d-pub")])
    text = generate_latest(registry_for(Collector(s, SourceSeries(k=5), lock, "6.18", dd))).decode()
    got = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
           if line.startswith("cttrace_destination_drops_total{")}
    assert got == {
        'cttrace_destination_drops_total{container="d-pub",destination="udp/18080",namespace="",pod=""}': 6,
        'cttrace_destination_drops_total{container="api",destination="udp/53",namespace="shop",pod="api-0"}': 2,
        'cttrace_destination_drops_total{container="",destination="other",namespace="",pod=""}': 3}


def _read_all(c: socket.socket) -> bytes:
    out = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            return out
        out += chunk


def _request(addr, data: bytes, timeout=5.0) -> bytes:
    with socket.create_connection(addr, timeout=timeout) as c:
        c.sendall(data)
        return _read_all(c)


def test_server_paths_and_methods():
    with MetricsServer("127.0.0.1", 0, lambda: b"m 1\n", "text/plain; version=0.0.4") as srv:
        ok = _request(srv.address, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nm 1\n")
        head = _request(srv.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        assert _request(srv.address, b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
        assert _request(srv.address, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
        assert _request(srv.address, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert _request(srv.address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000).startswith(b"HTTP/1.1 431 ")


def test_a_failing_render_is_a_500_not_a_dead_server():
    def render():
        raise ValueError("\udcff broken")
    with MetricsServer("127.0.0.1", 0, render, "text/plain") as srv:
        assert _request(srv.address, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500 ")
        assert _request(srv.address, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500 ")


def test_silent_clients_are_cut_at_the_deadline():
    """Slowloris: a connection that sends nothing holds a worker only until
    its deadline."""
    with MetricsServer("127.0.0.1", 0, lambda: b"m 1\n", "text/plain", workers=1, deadline=0.5) as srv:
        idle = socket.create_connection(srv.address)
        idle.settimeout(30)
        assert idle.recv(100) == b""                    # closed by the server
        idle.close()
        assert srv.timed_out == 1
        assert _request(srv.address, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_a_full_queue_answers_503_and_every_queued_scrape_is_answered():
    """Both workers held inside render() (an Event), the queue filled to its
    bound: the next connection gets 503 at once; once render() is released,
    all four held and queued requests get 200. No sleeps: the test waits on
    the render calls and on the server's accept count; the timeouts only
    end a failing run."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def render():
        entered.release()
        assert release.wait(30), "render() never released"
        return b"m 1\n"

    with MetricsServer("127.0.0.1", 0, render, "text/plain", workers=2, backlog=2, deadline=60) as srv:
        held = []
        try:
            for _ in range(2):                                      # both workers in render()
                held.append(socket.create_connection(srv.address, timeout=30))
                held[-1].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            for _ in range(2):
                assert entered.acquire(timeout=30), "a worker did not take its request"
            for _ in range(2):                                      # the queue, to its bound
                held.append(socket.create_connection(srv.address, timeout=30))
                held[-1].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            assert srv.wait_accepted(4, 30)
            assert srv.waiting == 2 and srv.rejected == 0
            # one more: refused at once. It sends nothing before reading, so
            # the server's close leaves no unread data behind (no RST).
            with socket.create_connection(srv.address, timeout=30) as extra:
                assert _read_all(extra).startswith(b"HTTP/1.1 503 ")
            assert srv.wait_accepted(5, 30) and srv.rejected == 1
            release.set()
            for c in held:
                assert _read_all(c).startswith(b"HTTP/1.1 200 ")
        finally:
            release.set()
            for c in held:
                c.close()
        assert srv.rejected == 1 and srv.timed_out == 0


def test_the_header_limit():
    with MetricsServer("127.0.0.1", 0, lambda: b"m 1\n", "text/plain") as srv:
        near = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 8000 + b"\r\n\r\n"      # under 8 KiB: served
        assert _request(srv.address, near).startswith(b"HTTP/1.1 200 ")
        over = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"      # complete, but over
        assert _request(srv.address, over).startswith(b"HTTP/1.1 431 ")


def test_a_dripping_client_is_cut_at_the_deadline():
    """Slowloris that sends a byte now and then: the deadline is for the
    whole request, not per read. The client drips for at most 20 s; the
    server (deadline 0.5 s) must have closed long before."""
    with MetricsServer("127.0.0.1", 0, lambda: b"m 1\n", "text/plain", workers=1, deadline=0.5) as srv:
        with socket.create_connection(srv.address, timeout=30) as c:
            c.sendall(b"GET /metrics HTTP/1.1\r\n")
            cut = False
            for _ in range(200):
                try:
                    c.sendall(b"X")
                except OSError:                                   # reset: closed by the server
                    cut = True
                    break
                c.settimeout(0.1)                                 # pacing; EOF means closed
                try:
                    if c.recv(100) == b"":
                        cut = True
                        break
                except socket.timeout:
                    pass
                except OSError:
                    cut = True
                    break
            assert cut and srv.timed_out == 1
        assert _request(srv.address, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_a_pruned_source_keeps_the_drops_it_had_when_forgotten():
    """A source without entries of its own (its packets are refused: the
    table is full) is pruned while it still drops: the drops counted
    between the sample and the delete of its BPF entries go to "other".
    Before: they were lost (5 of 922,075 in a 20-minute soak)."""
    entries = SimpleNamespace(inserts=Counter(), deletes=Counter(), by={"src": Counter()})
    forgotten = []

    def forget_sources(netns, srcs):
        forgotten.append((netns, srcs))
        return {"10.0.0.5": 13}                     # 3 more drops since the sample

    s = SimpleNamespace(feed=SimpleNamespace(entries=entries), inum=7,
                        counters=Counters("fake", sources=[SourceCounts(7, "10.0.0.5", table_full=10)]),
                        backend=SimpleNamespace(forget_sources=forget_sources))
    series = SourceSeries(k=0)                       # no labels: every idle source is prunable
    update_series(s, series, 0.0, prune=True)
    assert forgotten == [(7, {"10.0.0.5"})]
    assert series.series("drops") == {"other": 13}


def test_serve_pumps_again_at_once_after_a_long_pump(monkeypatch):
    """The pump loop runs a pump every PUMP_S, its work included: after a
    pump that took longer (a backlog of events) it does not sleep, so a
    burst does not outrun the socket's buffer (lost events cost a dump)."""
    from tracer.live import exporter
    clock = {"t": 100.0}
    sleeps: list = []
    work = [0.2, 0.2, 0.01]                          # two long pumps (a backlog), then a quick one
    lock = threading.Lock()
    s = fake_session(lock)

    def pump():
        clock["t"] += work.pop(0) if work else 0.0
        if not work:
            s.stopping = True
        return []
    s.pump, s.stopping = pump, False
    s.sample, s.inum = (lambda: None), 7
    s.backend.forget_sources = lambda netns, srcs: {}
    s.counters = Counters("fake")
    s.feed.entries.inserts, s.feed.entries.deletes = Counter(), Counter()
    fake_time = SimpleNamespace(monotonic=lambda: clock["t"], sleep=sleeps.append)
    monkeypatch.setattr(exporter, "time", fake_time)

    class Server:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass
    monkeypatch.setattr(exporter, "MetricsServer", Server)
    exporter.run(s, ("127.0.0.1", 0), 5, 1.0)
    assert sleeps[:2] == [0.0, 0.0]                  # long pumps: the next one at once
    assert abs(sleeps[2] - (exporter.PUMP_S - 0.01)) < 1e-9   # a quick one: the rest of the tick
