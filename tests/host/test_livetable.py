"""The live table feed (tracer/live/source.py) against the kernel: entries of
any age (made before the listener, expiring, deleted with `conntrack -D`),
with nf_conntrack_events on auto and off, ICMP entries, bounded pumps and
event overruns. Ground truth: a fresh `conntrack -L` of the namespace,
parsed as text (an independent reader), compared group by group."""

import socket
import time
from collections import Counter

import pytest

from tests import lab as L
from tracer.kernel import netns
from tracer.core.conntrack import PORT_PROTOS, proto_name
from tracer.live.source import LiveSource
from tracer.formats.export import TextDecoder, parse_line


def truth(ns: L.Netns) -> dict[str, Counter]:
    """Counts per source, destination, port and state of `conntrack -L`."""
    r = ns.run("conntrack", "-L", check=False)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    dec = TextDecoder()
    by = {g: Counter() for g in ("src", "dst", "dport", "state")}
    for line in out.splitlines():
        row = parse_line(line.encode())
        if row is None:
            continue
        proto = int(row[0])
        name = proto_name(proto)
        by["src"][dec.addr(row[2])[1]] += 1
        by["dst"][dec.addr(row[3])[1]] += 1
        by["dport"][f"{name}/{int(row[4])}" if proto in PORT_PROTOS and row[4] else name] += 1
        by["state"][row[1].decode() if row[1] else name] += 1
    return by


def view(src: LiveSource) -> dict[str, Counter]:
    return {g: Counter({k: v for k, v in c.items() if v}) for g, c in src.entries.by.items()}


def udp_from(ns: L.Netns, addr: str, n: int, first_port: int = 2000) -> None:
    with netns.entered(ns.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 0))
    try:
        for i in range(n):
            s.sendto(b"x", ("127.0.0.1", first_port + i))
    finally:
        s.close()


def follow(ns: L.Netns, src: LiveSource, within: float) -> float:
    """Pump until the view equals a fresh `conntrack -L`; seconds it took.
    Fails if it does not within `within` seconds."""
    t0 = time.monotonic()
    while True:
        for _ in range(5):
            src.pump()
            time.sleep(0.05)
        want = truth(ns)
        got = view(src)
        if got == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            assert got == want, src.status()


@pytest.fixture
def ns():
    with L.Netns("live") as n:
        yield n


def test_entries_of_any_age_follow_the_kernel(ns):
    assert int(ns.read("/proc/sys/net/netfilter/nf_conntrack_events")) == 2    # the default
    ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3")
    udp_from(ns, "127.0.0.20", 200)                  # old, and about to expire
    ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600")
    udp_from(ns, "127.0.0.21", 100)                  # old, long-lived: deleted below
    L.known_entries(ns)                              # TCP states, UDP, IPv6, ICMP
    ns.run("ping", "-c1", "-W1", "-I", "127.0.0.6", "127.0.0.1")   # a second ping: its own entry
    src = LiveSource(ns.name).start()
    try:
        assert view(src) == truth(ns)
        assert src.entries.by["state"]["icmp"] == 2 and src.entries.by["src"]["127.0.0.6"] == 2
        st = src.status()
        assert st["events"] == "auto" and not st["exact"] and st["legacy"] == len(src.entries)
        udp_from(ns, "127.0.0.22", 50)               # new: these send events
        ns.run("conntrack", "-D", "-s", "127.0.0.21")
        period = src.period()
        follow(ns, src, within=2 * period + 1.5)     # the deletes of old entries
        assert src.entries.by["src"]["127.0.0.21"] == 0
        assert src.entries.inserts["127.0.0.22"] == 50 and sum(src.entries.inserts.values()) == 50
        time.sleep(3.5)                              # the 200 old UDP entries expire
        follow(ns, src, within=2 * period + 1.5)
        assert src.entries.by["src"]["127.0.0.20"] == 0
        assert src.entries.by["src"]["127.0.0.22"] == 50
        assert src.swept >= 300 and src.overruns == 0, (src.status(), src.events.deletes)
    finally:
        src.close()


def test_events_off(ns):
    ns.sysctl("net.netfilter.nf_conntrack_events", "0")
    try:
        udp_from(ns, "127.0.0.30", 100)
        src = LiveSource(ns.name).start()
        try:
            st = src.status()
            assert st["events"] == "off" and not st["exact"]
            assert "events=0" in st["note"] and "no conntrack events" in st["note"]
            assert view(src) == truth(ns)
            udp_from(ns, "127.0.0.31", 60)            # no NEW event for these ...
            ns.run("conntrack", "-D", "-s", "127.0.0.30")   # ... nor DESTROY for these
            follow(ns, src, within=2 * src.period() + 1.5)
            assert src.entries.by["src"]["127.0.0.31"] == 60 and src.entries.by["src"]["127.0.0.30"] == 0
            assert not src.entries.inserts and not src.entries.deletes    # no events: none claimed
            assert src.resyncs >= 1
        finally:
            src.close()
    finally:
        ns.sysctl("net.netfilter.nf_conntrack_events", "2")


def test_update_is_not_an_insert(ns):
    src = LiveSource(ns.name).start()
    try:
        with netns.entered(ns.name):
            lst = ns.keep(socket.socket())
            lst.bind(("127.0.0.1", 8090))
            lst.listen(4)
            c = ns.keep(socket.socket())
            c.bind(("127.0.0.40", 0))
            c.connect(("127.0.0.1", 8090))            # NEW, then UPDATEs to ESTABLISHED
            ns.keep(lst.accept()[0])
        follow(ns, src, within=2)
        assert src.entries.inserts["127.0.0.40"] == 1
        assert src.entries.by["state"]["ESTABLISHED"] == 1
        assert src.events.updates >= 1
        assert src.status()["exact"]
    finally:
        src.close()


def test_bounded_pump_and_overrun_recovery(ns):
    src = LiveSource(ns.name).start()
    try:
        src.EVENTS_PER_PUMP = 300
        udp_from(ns, "127.0.0.50", 3000)
        time.sleep(0.2)
        src.pump()
        assert src.backlog and len(src.entries) < 3000  # bounded: the rest stays queued
        follow(ns, src, within=5)
    finally:
        src.close()
    src = LiveSource(ns.name, rcvbuf=4096).start()   # tiny buffer: events are lost
    try:
        udp_from(ns, "127.0.0.51", 2000, first_port=10000)
        time.sleep(0.2)
        src.pump()
        assert src.overruns >= 1 and src.status()["note"].startswith("events were lost")
        follow(ns, src, within=2 * src.period() + 2)
        # one reconcile per period at most, however much is lost meanwhile
        t0, r0 = time.monotonic(), src.resyncs
        for k in range(3):
            udp_from(ns, "127.0.0.52", 1000, first_port=20000 + 1000 * k)
            for _ in range(10):
                src.pump()
                time.sleep(0.05)
        assert src.resyncs - r0 <= (time.monotonic() - t0) / src.period() + 1
        follow(ns, src, within=2 * src.period() + 2)
    finally:
        src.close()
