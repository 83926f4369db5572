"""The live table without root: ctnetlink messages built byte by byte (as
the kernel sends them) decoded into rows, event kinds (NEW, UPDATE,
DESTROY), bounded polls, and LiveTable's counting and reconcile logic."""

import socket
import struct

from tracer.kernel import ctevents
from tracer.kernel import ctnetlink
from tracer.live import source
from tracer.core.aggregate import LiveTable, entry_key
from tracer.kernel.ctnetlink import (R_DPORT, R_ICMP, R_PROTO, R_SPORT, R_SRC, R_STATE, R_TIMEOUT, Row,
                              _walk)

NESTED = 0x8000


def nla(t: int, payload: bytes, nested: bool = False) -> bytes:
    body = struct.pack("=HH", 4 + len(payload), t | (NESTED if nested else 0)) + payload
    return body + b"\0" * (-len(body) % 4)


def message(proto=17, src="198.18.0.1", dst="198.18.0.2", sport=4000, dport=53, icmp=None,
            state=None, status=0, timeout=30, mtype=0, flags=0, v6=False) -> bytes:
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    a = socket.inet_pton(fam, src)
    b = socket.inet_pton(fam, dst)
    ip = nla(3 if v6 else 1, a) + nla(4 if v6 else 2, b)
    if icmp is None:
        l4 = nla(1, bytes([proto])) + nla(2, struct.pack(">H", sport)) + nla(3, struct.pack(">H", dport))
    else:
        typ, code, ident = icmp
        base = 7 if v6 else 4
        l4 = nla(1, bytes([proto])) + nla(base, struct.pack(">H", ident)) + \
            nla(base + 1, bytes([typ])) + nla(base + 2, bytes([code]))
    attrs = nla(1, nla(1, ip, True) + nla(2, l4, True), True) + nla(3, struct.pack(">I", status))
    if timeout is not None:
        attrs += nla(7, struct.pack(">I", timeout))
    if state is not None:
        attrs += nla(4, nla(1, nla(1, bytes([state])), True), True)
    attrs += nla(8, struct.pack(">I", 0))
    body = struct.pack("=BBH", fam, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (1 << 8) | mtype, flags, 0, 0) + body


def decode(msg: bytes):
    buf = bytearray(msg)
    return _walk(buf, 0, len(msg))


def test_row_columns_and_layout_reuse():
    row, layout = decode(message(sport=4000, dport=53, timeout=29))
    assert row[R_PROTO] == 17 and row[R_SPORT] == 4000 and row[R_DPORT] == 53
    assert row[R_TIMEOUT] == 29 and row[R_ICMP] is None and row[R_STATE] is None
    assert Row(*row).src == socket.inet_aton("198.18.0.1")
    # the next message of the same shape is read by the learnt layout
    again = layout.row(bytearray(message(sport=4001, dport=54, timeout=7)), 0)
    assert again[R_SPORT] == 4001 and again[R_DPORT] == 54 and again[R_TIMEOUT] == 7
    assert len(row) == len(Row._fields)


def test_icmp_rows_carry_id_type_code():
    a, _ = decode(message(proto=1, icmp=(8, 0, 77)))
    b, _ = decode(message(proto=1, icmp=(8, 0, 78)))
    assert a[R_ICMP] == 8 << 24 | 0 << 16 | 77 and a[R_DPORT] is None
    assert entry_key(a) != entry_key(b)              # two pings, two entries
    c, _ = decode(message(proto=58, src="2001:db8::1", dst="2001:db8::2", icmp=(128, 0, 9), v6=True))
    assert c[R_ICMP] == 128 << 24 | 9 and len(c[R_SRC]) == 16
    t = LiveTable()
    for r in (a, b, c):
        t.insert(r)
    assert len(t) == 3 and t.by["state"]["icmp"] == 2 and t.by["dport"]["icmpv6"] == 1


def test_event_kinds_and_bounded_poll():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    ev = ctevents.CtEvents(sock=b)     # no netlink: messages come from a socketpair
    try:
        a.send(message(flags=0x600, state=None))                  # NEW: NLM_F_CREATE|NLM_F_EXCL
        a.send(message(flags=0))                                  # UPDATE
        a.send(message(mtype=2, timeout=None))                    # DESTROY
        batch = ev.poll(0)
        assert [k for k, _ in batch.events] == [ctevents.INSERT, ctevents.UPDATE, ctevents.DELETE]
        assert (ev.inserts, ev.updates, ev.deletes) == (1, 1, 1) and not batch.more
        for i in range(10):
            a.send(message(sport=5000 + i, flags=0x600))
        first = ev.poll(0, max_events=4)
        assert len(first.events) == 4 and first.more          # the rest stays queued
        rest = ev.poll(0, max_events=100)
        assert len(rest.events) == 6 and not rest.more
    finally:
        a.close()
        b.close()


def rows(n, src="198.18.0.1", state=None, proto=17, first=1000):
    s = socket.inet_aton(src)
    return [(proto, state, s, socket.inet_aton("198.18.1.1"), 53, 0, (0, 0), first + i, None, 30)
            for i in range(n)]


def test_update_is_not_an_insert_and_deletes_count_once():
    t = LiveTable()
    r = rows(1, proto=6, state=1)[0]
    t.insert(r)
    t.update(r[:1] + (3,) + r[2:])                  # SYN_SENT -> ESTABLISHED
    assert t.inserts["198.18.0.1"] == 1 and len(t) == 1
    assert dict(t.by["state"]) == {"ESTABLISHED": 1}
    t.delete(r)
    assert t.deletes["198.18.0.1"] == 1 and len(t) == 0
    assert all(not c for c in t.by.values())


def test_reconcile_removes_what_the_dump_did_not_show():
    t = LiveTable()
    old = rows(5)
    t.reset(old)                                     # legacy: from a dump only
    assert t.legacy == 5 and t.by["src"]["198.18.0.1"] == 5
    new = rows(2, src="198.18.0.2")
    t.begin()
    t.insert(new[0])                                 # during the dump: kept
    t.delete(old[4])                                 # deleted before the dump read it ...
    for r in old[:2] + [old[4]]:                     # ... the dump shows 0, 1 and (stale) 4
        t.seen(r)
    t.seen(new[1])                                   # a new entry whose NEW event was lost
    gone = t.sweep()
    assert gone == 2                                 # 2 and 3 expired without an event
    assert dict(t.by["src"]) == {"198.18.0.1": 2, "198.18.0.2": 2}
    assert t.legacy == 3 and len(t) == 4
    t.update(old[0])                                 # an event: it has the event extension
    assert t.legacy == 2


def test_failed_reconcile_sweeps_nothing():
    t = LiveTable()
    t.reset(rows(3))
    t.begin()
    t.seen(rows(3)[0])
    t.abort()
    t.begin()
    for r in rows(3):
        t.seen(r)
    assert t.sweep() == 0 and len(t) == 3


def test_memory_per_entry_is_small():
    import sys
    t = LiveTable()
    t.reset(rows(20000))
    per = (sys.getsizeof(t.entries) + sum(sys.getsizeof(k) for k in t.entries)) / len(t)
    assert per < 100, per                           # no Python tuple per entry
    values = {id(v) for v in t.entries.values()}
    assert len(values) == 1                         # one shared small int


# --- the feed's schedule, with a fake clock, fake events and a fake dump (conftest) ---


def test_events_off_reconciles_once_per_period(live_feed, fake_reader):
    table = rows(50)
    src, clock, _ = live_feed(0, table)
    assert len(src.entries) == 50 and fake_reader.dumps == 1
    fake_reader.table = table[:20]                      # 30 gone, no event said so
    src.pump()
    assert fake_reader.dumps == 1                       # not due yet
    clock.t += src.period()
    src.pump()                                      # starts the reconcile and reads it
    src.pump()
    assert len(src.entries) == 20 and src.resyncs == 1 and src.swept == 30
    assert src.status()["events"] == "off" and "events=0" in src.status()["note"]


def test_reconcile_is_bounded_per_pump_and_never_back_to_back(live_feed, fake_reader):
    table = rows(100)
    src, clock, ev = live_feed(2, table)
    src.ROWS_PER_PUMP = 10
    clock.t += src.period()
    src.pump()                                      # begins (legacy entries)
    steps = 0
    while src.status()["reconciling"]:
        src.pump()
        steps += 1
    assert steps >= 10                              # 100 rows, 10 per pump
    ev.overrun = True                               # events lost right after a dump
    src.pump()
    dumps = fake_reader.dumps
    for _ in range(50):
        ev.overrun = True
        src.pump()
    assert fake_reader.dumps == dumps                   # waits for its period, however much is lost
    assert src.overruns == 51
    clock.t += src.period()
    src.pump()
    assert fake_reader.dumps == dumps + 1


def test_exact_from_events_needs_no_reconcile(live_feed, fake_reader):
    src, clock, ev = live_feed(1, [])
    new = rows(5, src="198.18.0.9")
    ev.queue = [("insert", r) for r in new]
    src.pump()
    assert len(src.entries) == 5 and src.status()["exact"] and src.entries.inserts["198.18.0.9"] == 5
    clock.t += 100 * src.period()
    src.pump()
    assert fake_reader.dumps == 1                       # events on, nothing legacy, nothing lost
    ev.queue = [("insert", r) for r in rows(300, src="198.18.0.10")]
    src.EVENTS_PER_PUMP = 100
    src.pump()
    assert src.backlog and len(src.entries) == 105     # bounded: the rest waits for the next pump


def test_a_failed_reconcile_is_counted_not_raised(live_feed, fake_reader, monkeypatch):
    src, clock, _ = live_feed(0, rows(10))

    class Broken(fake_reader):
        def read(self, n):
            raise ctnetlink.NetlinkError("ctnetlink request failed: No buffer space available")
    monkeypatch.setattr(source.ctnetlink, "DumpReader", Broken)
    clock.t += src.period()
    src.pump()                                      # begins
    src.pump()                                      # the read fails: no exception
    st = src.status()
    assert st["errors"] == 1 and "No buffer space" in st["last_error"] and len(src.entries) == 10
    src.pump()
    assert src.errors == 1                          # not retried before its period


def test_one_walker_reads_the_reply_tuple_for_nat():
    """ctnetlink.walk(reply=True), as both_tuples() reads NAT: a SNAT'd
    UDP entry (reply to 192.0.2.1:61000) read field by field, and a second
    message of the same kind read through the cached Layout."""
    def snat(sport):
        o_ip = nla(1, socket.inet_aton("198.18.0.1")) + nla(2, socket.inet_aton("198.18.0.2"))
        r_ip = nla(1, socket.inet_aton("198.18.0.2")) + nla(2, socket.inet_aton("192.0.2.1"))
        o_l4 = nla(1, bytes([17])) + nla(2, struct.pack(">H", sport)) + nla(3, struct.pack(">H", 53))
        r_l4 = nla(1, bytes([17])) + nla(2, struct.pack(">H", 53)) + nla(3, struct.pack(">H", 61000))
        attrs = nla(1, nla(1, o_ip, True) + nla(2, o_l4, True), True) + \
            nla(2, nla(1, r_ip, True) + nla(2, r_l4, True), True) + nla(3, struct.pack(">I", 0))
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
        return bytearray(struct.pack("=IHHII", 16 + len(body), 1 << 8, 0, 0, 0) + body)
    buf = snat(4000)
    hdrs, fields = ctnetlink.walk(buf, 0, len(buf), reply=True)
    assert {"proto", "src", "dst", "sport", "dport", "rsrc", "rdst", "rsport", "rdport"} <= set(fields)
    lay = ctnetlink.Layout(buf, 0, hdrs, fields)
    other = snat(4001)
    assert lay.matches(other, 0)
    v = dict(zip(lay.order, lay.values.unpack_from(other, 0)))
    assert (v["sport"], v["rdst"], v["rdport"]) == (4001, socket.inet_aton("192.0.2.1"), 61000)
    # without reply=True the reply tuple is not read (the snapshot's fast path)
    assert "rdst" not in ctnetlink.walk(buf, 0, len(buf))[1]


def test_dnat_entries_count_for_the_reply_source():
    """A DNATed entry (published port: reply from the container's address)
    counts for that address as the destination side; removed with it."""
    import socket as _s
    from tracer.core.aggregate import LiveTable, top_rows
    a = _s.inet_aton
    # proto, state, src, dst, dport, flags, markzone, sport, icmp, timeout, reply src
    dn = (17, None, a("198.19.9.1"), a("198.19.9.254"), 8080, 0, (None, 0), 4000, None, 30, a("172.17.0.2"))
    plain = (17, None, a("172.17.0.2"), a("198.19.9.1"), 53, 0, (None, 0), 4001, None, 30, a("198.19.9.1"))
    t = LiveTable()
    t.insert(dn)
    t.insert(plain)
    t.update(dn)
    assert dict(t.dnat) == {"172.17.0.2": 1}
    names = {"172.17.0.2": "web"}
    rows = top_rows(t, {}, "container", "entries", 10, names.get)
    web = next(r for r in rows if r["key"] == "web")
    assert (web["entries"], web["entries_as_destination"]) == (1, 1)
    t.delete(dn)
    assert dict(t.dnat) == {}
    t.fill([[dn, plain]])
    assert dict(t.dnat) == {"172.17.0.2": 1}
    t.begin()
    t.seen(plain)
    t.sweep()
    assert dict(t.dnat) == {} and t.nat == {}


def test_reconcile_dumps_are_counted_by_reason(live_feed, fake_reader):
    """serve exports them (cttrace_table_reconciles_total{reason}): a dump
    in a window of a CPU measurement is told apart from a steady cost."""
    src, clock, ev = live_feed(1, rows(10))            # events on: the first dump's entries are legacy
    assert src.dumps == {} and src.dump_seconds == 0
    clock.t += src.period()
    src.pump()
    src.pump()
    assert src.dumps == {"legacy": 1} and src.resyncs == 1
    ev.overrun = True
    src.pump()
    clock.t += src.period()
    src.pump()
    src.pump()
    assert src.dumps == {"legacy": 1, "events_lost": 1} and src.dump_seconds >= 0
