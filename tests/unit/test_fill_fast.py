"""The first dump's fast paths, without root: bulk-load records built by C
loops equal entry_key's (and give way to it where its rules differ), a
table filled through them counts as one filled row by row, and the dump's
receiver thread stays a bounded number of buffers ahead of the parser and
stops when the parser ends, at the dump's end or on an error."""

import socket
import struct
import threading
import time

import pytest

from tracer.core.aggregate import LiveTable, entry_key, load_records
from tracer.kernel import ctnetlink
from tests.unit.test_livetable import message

A = socket.inet_aton
V6 = lambda s: socket.inet_pton(socket.AF_INET6, s)       # noqa: E731
CODES = {st: bytes((st if st is not None else 0x1F,)) for st in (None, *range(256))}


def row(proto=17, state=None, src="198.18.0.1", dst="198.18.1.1", dport=53, sport=4000, icmp=None,
        zone=0, rsrc=None, v6=False):
    f = V6 if v6 else A
    # proto, state, src, dst, dport, flags, markzone, sport, icmp, timeout, reply src
    return (proto, state, f(src), f(dst), dport, 0, (None, zone), sport, icmp, 30,
            f(rsrc) if rsrc else f(dst))


def slow(rows):
    return b"".join(entry_key(r, CODES[r[1]]) for r in rows)


def test_records_equal_entry_keys():
    rows = [row(), row(proto=6, state=3, sport=0, dport=443, zone=7),
            row(src="198.18.0.2", dport=65535, sport=65535)]
    blob, rs = load_records(rows, CODES)
    assert blob == slow(rows) and rs == 16
    v6 = [row(v6=True, src="2001:db8::1", dst="2001:db8::2"), row(proto=6, state=1, v6=True,
                                                                  src="2001:db8::3", dst="2001:db8::2")]
    blob, rs = load_records(v6, CODES)
    assert blob == slow(v6) and rs == 40


@pytest.mark.parametrize("rows", [
    [row(), row(proto=1, dport=None, sport=None, icmp=8 << 24 | 77)],          # ICMP: id, type, code
    [row(proto=1, dport=None, sport=None, icmp=0)],                              # an echo reply with id 0
    [row(proto=47, dport=None, sport=None)],                                     # no ports (GRE)
    [row(), row(v6=True, src="2001:db8::1", dst="2001:db8::2")],                 # IPv4 and IPv6
    [row()[:8]],                                                                 # a short row
    [],
])
def test_records_give_way_to_entry_key(rows):
    assert load_records(rows, CODES) is None


def test_fill_counts_as_row_by_row():
    rows = [row(src=f"198.18.0.{i % 7}", dport=1000 + i, sport=2000 + i % 3) for i in range(300)]
    rows += [row(proto=1, dport=None, sport=None, icmp=8 << 24 | i) for i in range(5)]
    rows += [row(proto=6, state=3, v6=True, src="2001:db8::1", dst="2001:db8::2", dport=i) for i in range(4)]
    rows += [row(dport=9000, rsrc="172.17.0.2")]                                  # DNATed
    rows += [row(src="198.18.0.0", dport=1000, sport=2000)]                       # shown twice
    fast, one = LiveTable(), LiveTable()
    fast.fill([rows[i:i + 64] for i in range(0, len(rows), 64)])
    one.reset(rows)
    assert len(fast) == len(one) == len(rows) - 1
    assert fast.by == one.by and dict(fast.dnat) == dict(one.dnat) == {"172.17.0.2": 1}
    assert sorted(fast.entries.keys()) == sorted(one.entries.keys())
    for r in rows:
        fast.delete(r)
    assert len(fast) == 0 and not any(fast.by.values())


class _FakeKernel:
    """A netlink socket that holds a dump's datagrams: what _open() returns."""

    def __init__(self, datagrams):
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.datagrams = datagrams
        self.received = 0

    def fileno(self):
        return self.a.fileno()

    def send(self, data):                 # the dump request: the "kernel" answers
        for d in self.datagrams:
            self.b.send(d)
        return len(data)

    def recv_into(self, buf):
        self.received += 1
        return self.a.recv_into(buf)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.a.close()
        self.b.close()


def done() -> bytes:
    return struct.pack("=IHHIIi", 20, ctnetlink.NLMSG_DONE, 2, 0, 0, 0)


def test_dump_ends_with_the_parser_and_stays_bounded_ahead(monkeypatch):
    grams = [message(sport=1000 + i, dport=53) * 3 for i in range(40)] + [message(sport=5000) + done()]
    k = _FakeKernel(grams)
    monkeypatch.setattr(ctnetlink, "_open", lambda: k)
    monkeypatch.setattr(ctnetlink, "AHEAD", 4)
    seen, ahead = [], []

    def sink(rows):                     # a slow parser: the receiver waits for it
        seen.extend(rows)
        time.sleep(0.005)
        ahead.append(k.received - (len(ahead) + 1))     # received - parsed
    before = threading.active_count()
    res = ctnetlink.dump(sink=sink)
    assert res.count == len(seen) == 121 and sorted(r[7] for r in seen)[-1] == 5000
    assert max(ahead) == 4                                      # never more than AHEAD buffers ahead
    assert threading.active_count() == before                  # the receiver has ended


def test_dump_error_stops_the_receiver(monkeypatch):
    bad = bytearray(message())
    struct.pack_into("=I", bad, 0, 10)                          # a message shorter than its header
    k = _FakeKernel([message()] * 3 + [bytes(bad)] + [message()] * 50)
    monkeypatch.setattr(ctnetlink, "_open", lambda: k)
    monkeypatch.setattr(ctnetlink, "AHEAD", 2)
    before = threading.active_count()
    with pytest.raises(ctnetlink.NetlinkError, match="malformed"):
        ctnetlink.dump(sink=lambda rows: None)
    assert threading.active_count() == before


def test_deferred_fill_settles_before_any_read_or_event():
    """fill_end(defer=True) leaves the store's sort to settle(): by, len()
    and events settle first, so nothing reads an unsorted store, and an
    entry the dump showed twice counts once."""
    rows = [row(src=f"198.18.0.{i % 5}", dport=1000 + i) for i in range(200)]
    for act in (lambda t: t.by["src"], len, lambda t: t.insert(row(dport=7)),
                lambda t: t.delete(rows[0]), lambda t: t.update(rows[1]), LiveTable.begin):
        t, one = LiveTable(), LiveTable()
        t.fill_start()
        t.fill_rows(rows[:150])
        t.fill_rows(rows[150:] + [rows[7]])           # shown twice
        t.fill_end(defer=True)
        assert t.entries.get(entry_key(rows[3])) is None          # not sorted in yet
        one.fill([rows])
        act(t)
        act(one)
        assert t.entries.get(entry_key(rows[3])) is not None
        assert len(t) == len(one) and t.by == one.by and t.legacy == one.legacy
        assert sorted(t.entries.items()) == sorted(one.entries.items())
