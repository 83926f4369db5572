"""Forecast and evidence against a namespace whose fill curve the test knows:
a burst of UDP flows, then a generator at a fixed rate, with a known UDP
timeout. Every figure is compared with what the test computes from its own
generator's send times."""

import json
import socket
import subprocess
import threading
import time

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE
from tracer.core import doctor as D
from tracer.kernel import netns
from tracer.kernel.host import read_live

T = 100          # nf_conntrack_udp_timeout in the test's namespace
BURST = 1000     # flows 127.0.0.9 -> 127.0.0.1:5000, one socket each
RATE = 100.0     # generator: flows per second 127.0.0.10 -> 127.0.0.1:6000
WAIT = 45        # seconds between the burst and the reading


class Generator(threading.Thread):
    """New UDP flows at a fixed rate (a new socket, so a new source port, each)."""

    def __init__(self, ns: str, rate: float):
        super().__init__(daemon=True)
        self.ns, self.rate = ns, rate
        self.sent: list[float] = []
        self.stop = threading.Event()

    def run(self):
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            due = t0 + i / self.rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            with netns.entered(self.ns):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.10", 20000 + i % 40000))     # a reused port would be the same entry
                s.sendto(b"g", ("127.0.0.1", 6000))
                self.sent.append(time.monotonic())
            finally:
                s.close()
            i += 1


def truth_full(sent: list[float], t_ref: float, limit: int, rate: float,
               life: float = T) -> float | None:
    """First s >= 0 at which the flows alive at t_ref + s (each lives `life`
    seconds after it was sent; the generator goes on at `rate`) reach
    limit; None within 3 lives."""
    s = 0.0
    while s < 3 * life:
        alive = sum(1 for x in sent if x + life > t_ref + s) + rate * min(s, life)
        if alive >= limit:
            return s
        s += 0.05
    return None


@pytest.fixture
def ns():
    with L.Netns("fc") as n:
        path = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"
        old = n.read(path).strip()
        n.sysctl("net.netfilter.nf_conntrack_udp_timeout", str(T))
        try:
            yield n
        finally:
            n.sysctl("net.netfilter.nf_conntrack_udp_timeout", old)


def burst(ns: str, n: int) -> list[float]:
    """n UDP flows 127.0.0.9:10000+i -> 127.0.0.1:5000 in namespace ns, one
    socket each; their send times."""
    sent = []
    with netns.entered(ns):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for i, s in enumerate(socks):
        s.bind(("127.0.0.9", 10000 + i))
        s.sendto(b"b", ("127.0.0.1", 5000))
        sent.append(time.monotonic())
        s.close()
    return sent


def test_forecast_and_timeout_evidence_match_the_generator(ns):
    sent = burst(ns.name, BURST)
    time.sleep(WAIT - 2)
    gen = Generator(ns.name, RATE)
    gen.start()
    try:
        time.sleep(2)
        t_dump = time.monotonic()
        h = read_live(ns.name, window=4.0)
        t_ref = time.monotonic()
        findings = {f.id: f for f in D.diagnose(h)}
        cli = subprocess.run([CTTRACE, "doctor", "--json", "--netns", ns.name], capture_output=True,
                             text=True, timeout=120)
    finally:
        gen.stop.set()
        gen.join()
    assert cli.returncode == 0, cli.stderr
    a = h.ages
    both = sent + gen.sent
    before = [x for x in both if x <= t_dump]
    # the dump saw every flow sent before it (none had expired: T > WAIT + 2)
    assert a["total"] == h.total and len(before) <= a["total"] <= len(before) + RATE
    # expiry schedule: the burst expires within a minute (T - WAIT s left),
    # the generator's flows (sent in the last seconds) not
    sched = a["schedule"]["udp/UNREPLIED"]
    gen_in_dump = a["total"] - BURST
    assert sched["10s"] == 0 and sched["1m"] == BURST and sched["10m"] == a["total"]
    # idle buckets: the burst idles WAIT s, the generator's flows under 10 s
    idle = a["idle"]["udp/UNREPLIED"]
    assert idle["timeout"] == T
    assert idle["buckets"]["10s-1m"] == BURST and idle["buckets"]["0s-10s"] == gen_in_dump
    assert sum(idle["buckets"].values()) == a["total"]
    # a 10 s UDP timeout would free exactly the burst: its source and port
    c = next(c for c in a["candidates"] if c["sysctl"] == "udp_timeout" and c["proposed"] == 10)
    assert c["freed"] == BURST
    assert c["by_app"] == [{"src": "127.0.0.9", "dport": "udp/5000", "entries": BURST}]
    f = findings["shorter_udp_timeout"]
    assert f"would free {BURST:,} entries now" in f.message
    assert "udp/5000: 1,000 entries from 1 source" in f.evidence
    assert f.cuts[0]["top_sources"] == [{"src": "127.0.0.9", "entries": BURST}]
    assert "sysctl -w net.netfilter.nf_conntrack_udp_timeout=10" in f.fix
    out = json.loads(cli.stdout)
    assert "shorter_udp_timeout" in {x["id"] for x in out["findings"]}
    assert out["state"]["ages"]["idle"]["udp/UNREPLIED"]["buckets"]["10s-1m"] == BURST
    # the measured insert rate: the generator's, within the stated band
    fc_ = D.table_forecast(h, 10**9)
    assert fc_["rate_low"] <= RATE <= fc_["rate_high"], fc_
    # time to full against known limits, the truth from the send times:
    # L1 is reached before the burst expires, L2 only after it (a straight
    # line from the net count would say much sooner)
    s_burst = T - (t_ref - sent[-1])
    for limit in (h.count + int(RATE * 10), h.count - BURST + int(RATE * (s_burst + 15))):
        truth = truth_full(both, t_ref, limit, RATE)
        got = D.table_forecast(h, limit)
        assert got["filling"] and truth is not None, (got, truth)
        assert got["low"] - 1 <= truth <= got["high"] + 1, (limit, got, truth)
    # not filling: the steady level RATE * T is under the limit, and the forecast says so
    big = int(RATE * T * 1.5)
    got = D.table_forecast(h, big)
    assert truth_full(both, t_ref, big, RATE) is None
    assert got["filling"] is False and got["rate_low"] * T <= got["steady"] <= got["rate_high"] * T
