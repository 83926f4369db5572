"""ctnetlink (NETLINK_NETFILTER, subsystem CTNETLINK): table dumps and stats.

Rows are plain tuples (a NamedTuple would cost a Python call per entry on
the hot path); `Row` documents them and names the columns, and the R_*
constants index them:

    (proto, state, src, dst, dport, flags, (mark, zone), sport, icmp, timeout)

The first seven are what snapshot.Columns counts (see snapshot.py); sport,
icmp (type << 24 | code << 16 | id, for ICMP and ICMPv6, else None) and
timeout (seconds left, from CTA_TIMEOUT; None where the message has none,
e.g. DESTROY events) identify and age an entry in the live table
(tracer/live/source.py).

Written by hand rather than with pyroute2: a snapshot of a 200,000-entry
table must take about as long as `conntrack -L` itself, and a generic
attribute decoder that builds an object per attribute is an order of
magnitude slower. Here each message is walked with struct.unpack_from and
only the attributes a breakdown needs are read.

Message and attribute numbers: include/uapi/linux/netfilter/nfnetlink.h,
nfnetlink_conntrack.h (UAPI). All ctnetlink integers are big-endian.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

from tracer.core.conntrack import (F_ASSURED, F_HW_OFFLOAD, F_OFFLOAD, F_UNREPLIED,
                              IPS_ASSURED, IPS_HW_OFFLOAD, IPS_OFFLOAD,
                              IPS_SEEN_REPLY, STATE_NAMES)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_GET_STATS_CPU = 4
IPCTNL_MSG_CT_GET_STATS = 5
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT, CTA_MARK, CTA_ZONE = 1, 2, 3, 4, 7, 8, 18
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
# enum ctattr_l4proto: ICMP (4, 5, 6) and ICMPv6 (7, 8, 9) id, type, code
CTA_PROTO_ICMP = {4: "icmp_id", 5: "icmp_type", 6: "icmp_code",
                  7: "icmp_id", 8: "icmp_type", 9: "icmp_code"}

# Columns of a row (see the module docstring). The first eight equal
# tracer.core.conntrack's PROTO .. SPORT.
R_PROTO, R_STATE, R_SRC, R_DST, R_DPORT, R_FLAGS, R_MARKZONE, R_SPORT, R_ICMP, R_TIMEOUT = range(10)


class Row(NamedTuple):
    """What each column of a ctnetlink row holds (documentation and tests;
    the readers build plain tuples of the same shape)."""
    proto: int                 # IP protocol number
    state: int | None          # TCP/SCTP/DCCP state number (conntrack.STATE_NAMES), else None
    src: bytes                 # original source address, 4 or 16 bytes
    dst: bytes                 # original destination address
    dport: int | None          # original destination port (port protocols)
    flags: int                 # conntrack.F_* bits
    markzone: tuple            # (mark or None, zone)
    sport: int | None          # original source port
    icmp: int | None           # type << 24 | code << 16 | id (ICMP, ICMPv6)
    timeout: int | None        # seconds until the entry expires (CTA_TIMEOUT)
    rsrc: bytes | None         # reply source address: differs from dst when DNATed

# enum ctattr_stats_cpu, named as `conntrack -S` prints them
STATS_CPU = {2: "found", 4: "invalid", 8: "insert", 9: "insert_failed", 10: "drop",
             11: "early_drop", 12: "error", 13: "search_restart", 14: "clash_resolve",
             15: "chaintoolong"}
CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES = 1, 2

_HDR = struct.Struct("=IHHII").unpack_from
_NLA = struct.Struct("=HH").unpack_from
_BE16 = struct.Struct(">H").unpack_from
_BE32 = struct.Struct(">I").unpack_from
_ERR = struct.Struct("=i").unpack_from


class NetlinkError(Exception):
    """ctnetlink could not be used; the message says why and what to do."""


@dataclass
class DumpResult:
    rows: list = field(default_factory=list)   # empty when a sink took them
    interrupted: bool = False      # the table changed under the dump (NLM_F_DUMP_INTR)
    unreadable: int = 0            # messages without an original tuple (counted, not shown)
    count: int = 0                 # rows read


class NetlinkDecoder:
    """Decoder (see snapshot.Decoder) for rows made by this module."""

    def __init__(self) -> None:
        self._addr: dict[bytes, tuple[str, str]] = {}

    def proto(self, raw: int) -> int:
        return raw

    def state(self, proto: int, raw: int | None) -> str:
        if raw is None:
            return ""
        names = STATE_NAMES.get(proto, ())
        return names[raw] if raw < len(names) else str(raw)

    def addr(self, raw: bytes) -> tuple[str, str]:
        try:
            return self._addr[raw]
        except KeyError:
            fam = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
            v = self._addr[raw] = ("ipv4" if fam == socket.AF_INET else "ipv6",
                                   socket.inet_ntop(fam, raw))
            return v

    def dport(self, raw: int | None) -> int | None:
        return raw

    def extra(self, raw: tuple) -> tuple[int, int | None, int]:
        flags, (mark, zone) = raw
        return flags, mark, zone


def _open() -> socket.socket:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as e:
        if e.errno == errno.EPROTONOSUPPORT:          # nfnetlink not in this kernel
            raise NetlinkError("this kernel has no netfilter netlink (nfnetlink): load it with "
                               "modprobe nf_conntrack_netlink") from None
        raise NetlinkError(f"cannot open a netfilter netlink socket: {e.strerror}") from None
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)      # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((0, 0))
    return s


def _request(sock: socket.socket, msg_type: int, flags: int = NLM_F_DUMP) -> None:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | msg_type,
                      NLM_F_REQUEST | flags, 1, 0)
    sock.send(hdr + body)


def raise_for(err: int) -> None:
    """The NetlinkError for an errno the kernel answered a request with."""
    if err in (errno.EPERM, errno.EACCES):
        raise NetlinkError("reading the conntrack table through ctnetlink needs root "
                           "(CAP_NET_ADMIN): run with sudo")
    if err in (errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOTSUPP
               if hasattr(errno, "ENOTSUPP") else errno.EOPNOTSUPP):
        raise NetlinkError("ctnetlink is not available in this kernel "
                           "(load it: modprobe nf_conntrack_netlink)")
    raise NetlinkError(f"ctnetlink request failed: {os.strerror(err)}")


def _messages(sock: socket.socket):
    """Yield (buffer, offset, length, nfgen res_id, flags) of each reply message of a dump."""
    buf = bytearray(1 << 20)
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError as e:
            raise_for(e.errno)
        off = 0
        while off + 16 <= n:
            mlen, mtype, mflags, _, _ = _HDR(buf, off)
            if mlen < 16:
                raise NetlinkError("malformed netlink message from the kernel")
            if mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                err = -_ERR(buf, off + 16)[0]
                if err:
                    raise_for(err)
                return
            yield buf, off, mlen, mflags
            off += (mlen + 3) & ~3


def _flags(status: int) -> int:
    return ((F_ASSURED if status & IPS_ASSURED else 0)
            | (0 if status & IPS_SEEN_REPLY else F_UNREPLIED)
            | (F_OFFLOAD if status & IPS_OFFLOAD else 0)
            | (F_HW_OFFLOAD if status & IPS_HW_OFFLOAD else 0))


class Layout:
    """The attribute layout of one kind of message (e.g. IPv4 UDP on this kernel).

    Messages of one kind put every attribute at the same offset, so once a
    message has been walked (walk()), the next one of the same length and
    family is checked with one struct call (all attribute headers equal?)
    and read with another (all needed values, `values`, named by `order`),
    instead of a Python loop per attribute.
    """

    __slots__ = ("headers", "expect", "values", "order")

    def __init__(self, buf, off: int, hdr_offsets: list[int], fields: dict[str, tuple[int, str]]):
        self.headers = struct.Struct(_fmt([(o, "I") for o in hdr_offsets]))
        self.expect = self.headers.unpack_from(buf, off)
        order = sorted(fields.items(), key=lambda kv: kv[1][0])
        self.values = struct.Struct(_fmt([spec for _, spec in order]))
        self.order = [name for name, _ in order]

    def matches(self, buf, off: int) -> bool:
        return self.headers.unpack_from(buf, off) == self.expect


class _Layout(Layout):
    """A Layout that reads a message into a Row's fields (row())."""

    __slots__ = ("main", "status", "markzone", "sport", "icmp", "timeout", "rsrc")

    def __init__(self, buf, off: int, hdr_offsets: list[int], fields: dict[str, tuple[int, str]]):
        super().__init__(buf, off, hdr_offsets, fields)
        # Absent fields read from two defaults appended to the values: None and 0.
        ix = {name: i for i, name in enumerate(self.order)}
        none, zero = len(self.order), len(self.order) + 1
        self.main = itemgetter(ix.get("proto", zero), ix.get("state", none), ix["src"],
                               ix["dst"], ix.get("dport", none))
        self.status = ix.get("status", zero)
        self.markzone = itemgetter(ix.get("mark", none), ix.get("zone", zero))
        self.sport = ix.get("sport", none)
        self.icmp = (ix.get("icmp_type", zero), ix.get("icmp_code", zero), ix["icmp_id"]) \
            if "icmp_id" in ix else None
        self.timeout = ix.get("timeout", none)
        self.rsrc = ix.get("rsrc", none)

    def row(self, buf, off: int) -> tuple | None:
        if self.headers.unpack_from(buf, off) != self.expect:
            return None
        v = self.values.unpack_from(buf, off) + _DEFAULTS
        status = v[self.status]
        flags = _FLAGS.get(status)
        if flags is None:
            flags = _FLAGS[status] = _flags(status)
        ic = self.icmp
        icmp = None if ic is None else v[ic[0]] << 24 | v[ic[1]] << 16 | v[ic[2]]
        return self.main(v) + (flags, self.markzone(v), v[self.sport], icmp, v[self.timeout],
                                 v[self.rsrc])


_DEFAULTS = (None, 0)
_FLAGS: dict[int, int] = {}


def _fmt(specs: list[tuple[int, str]]) -> str:
    """Big-endian struct format reading `specs` [(offset, code)] in order."""
    out, pos = [">"], 0
    for o, code in specs:
        if o > pos:
            out.append(f"{o - pos}x")
        out.append(code)
        pos = o + struct.calcsize(">" + code)
    return "".join(out)


def walk(buf, off: int, mlen: int, reply: bool | str = False) -> tuple[list[int], dict[str, tuple[int, str]]]:
    """Read one message attribute by attribute (the one walker of
    ctnetlink messages): the offsets of the attribute headers walked, and
    {field: (offset, struct code)} of the original tuple (proto, src, dst,
    sport, dport, icmp_*, zone), with `reply` the reply tuple's (rsrc,
    rdst, rsport, rdport; only rsrc with reply="src", the address a DNATed
    entry really goes to), and status, state, mark, timeout."""
    hdrs: list[int] = []
    fields: dict[str, tuple[int, str]] = {}

    def attrs(start: int, end: int):
        pos = start
        while pos + 4 <= end:
            alen, atype = _NLA(buf, pos)
            if alen < 4 or pos + alen > end:
                return
            hdrs.append(pos - off)
            yield pos, alen, atype & 0x3fff
            pos += (alen + 3) & ~3

    def tuple_(pos: int, alen: int, pre: str, only_src: bool = False) -> None:
        orig = not pre
        for p2, l2, t2 in attrs(pos + 4, pos + alen):
            if t2 == CTA_TUPLE_IP:
                for p3, l3, t3 in attrs(p2 + 4, p2 + l2):
                    if t3 in (CTA_IP_V4_SRC, CTA_IP_V6_SRC) and l3 in (8, 20):
                        fields[pre + "src"] = (p3 + 4 - off, f"{l3 - 4}s")
                    elif only_src:
                        continue
                    elif t3 in (CTA_IP_V4_DST, CTA_IP_V6_DST) and l3 in (8, 20):
                        fields[pre + "dst"] = (p3 + 4 - off, f"{l3 - 4}s")
            elif t2 == CTA_TUPLE_PROTO and not only_src:
                for p3, l3, t3 in attrs(p2 + 4, p2 + l2):
                    if t3 == CTA_PROTO_NUM and l3 >= 5 and orig:
                        fields["proto"] = (p3 + 4 - off, "B")
                    elif t3 == CTA_PROTO_DST_PORT and l3 >= 6:
                        fields[pre + "dport"] = (p3 + 4 - off, "H")
                    elif t3 == CTA_PROTO_SRC_PORT and l3 >= 6:
                        fields[pre + "sport"] = (p3 + 4 - off, "H")
                    elif t3 in CTA_PROTO_ICMP and l3 >= 5 and orig:
                        name = CTA_PROTO_ICMP[t3]
                        fields[name] = (p3 + 4 - off, "H" if name == "icmp_id" and l3 >= 6 else "B")
            elif t2 == CTA_TUPLE_ZONE and l2 >= 6 and orig:
                fields["zone"] = (p2 + 4 - off, "H")

    for pos, alen, t in attrs(off + 20, off + mlen):
        if t == CTA_TUPLE_ORIG:
            tuple_(pos, alen, "")
        elif t == CTA_TUPLE_REPLY and reply:
            tuple_(pos, alen, "r", only_src=reply == "src")
        elif t == CTA_STATUS and alen >= 8:
            fields["status"] = (pos + 4 - off, "I")
        elif t == CTA_PROTOINFO:
            # one nested protocol attribute (tcp, dccp, sctp) whose first member is its state
            for p2, l2, t2 in attrs(pos + 4, pos + alen):
                for p3, l3, t3 in attrs(p2 + 4, p2 + l2):
                    if t3 == 1 and l3 >= 5:
                        fields["state"] = (p3 + 4 - off, "B")
                    break
                break
        elif t == CTA_MARK and alen >= 8:
            fields["mark"] = (pos + 4 - off, "I")
        elif t == CTA_TIMEOUT and alen >= 8:
            fields["timeout"] = (pos + 4 - off, "I")
        elif t == CTA_ZONE and alen >= 6:
            fields["zone"] = (pos + 4 - off, "H")
    return hdrs, fields


def _walk(buf, off: int, mlen: int) -> tuple[tuple | None, _Layout | None]:
    """Read one message attribute by attribute: (row, its layout)."""
    hdrs, fields = walk(buf, off, mlen, reply="src")     # the reply's source: DNAT
    if "src" not in fields or "dst" not in fields:
        return None, None
    layout = _Layout(buf, off, hdrs, fields)
    return layout.row(buf, off), layout


def both_tuples():
    """Both tuples of every entry of the current namespace, one
    (proto, osrc, osport, odst, odport, rsrc, rsport, rdst, rdport) each
    (addresses as raw bytes; ports 0 where the protocol has none)."""
    layouts: dict = {}
    with _open() as sock:
        _request(sock, IPCTNL_MSG_CT_GET)
        for buf, off, mlen, _ in _messages(sock):
            key = (mlen, buf[off + 16])
            lay = layouts.get(key)
            if lay is None or not lay.matches(buf, off):
                hdrs, fields = walk(buf, off, mlen, reply=True)
                if not all(k in fields for k in ("proto", "src", "dst", "rsrc", "rdst")):
                    continue
                lay = layouts[key] = Layout(buf, off, hdrs, fields)
            v = dict(zip(lay.order, lay.values.unpack_from(buf, off)))
            yield (v["proto"], v["src"], v.get("sport", 0), v["dst"], v.get("dport", 0),
                   v["rsrc"], v.get("rsport", 0), v["rdst"], v.get("rdport", 0))


AHEAD = 32     # buffers received ahead of the parser (2 MiB); beyond, the kernel waits


def _receiver(sock: socket.socket, out: queue.SimpleQueue, ahead: threading.Semaphore,
              stop: int) -> None:
    """Receive a dump's buffers (the kernel builds each one during recv, with
    the GIL released) while the caller parses the previous ones, at most
    AHEAD buffers ahead of it (a slow parser must not hold the whole dump
    in memory), until the caller writes to the `stop` pipe: it has parsed
    the dump's end or failed. No Python walk over the messages here (one
    per entry: 0.15 s per million)."""
    try:
        waiting = select.poll()
        waiting.register(sock, select.POLLIN)
        waiting.register(stop, select.POLLIN)
        while True:
            ahead.acquire()
            if any(fd == stop for fd, _ in waiting.poll()):
                return
            buf = bytearray(64 << 10)
            out.put((buf, sock.recv_into(buf)))
    except BaseException as e:      # never leave the parser waiting forever
        out.put(e)


class _Parser:
    """Rows of ctnetlink messages, with the layouts learnt so far."""

    def __init__(self) -> None:
        self.layouts: dict[tuple[int, int], _Layout] = {}
        self.unreadable = 0
        self.interrupted = False
        self.done = False

    def rows(self, buf, n: int) -> list:
        """The rows of one received buffer; sets .done at the end of the dump."""
        out: list = []
        append = out.append
        layouts = self.layouts
        off = 0
        while off + 16 <= n:
            mlen, mtype, mflags, _, _ = _HDR(buf, off)
            if mtype == NLMSG_DONE:
                self.done = True
                break
            if mtype == NLMSG_ERROR:
                err = -_ERR(buf, off + 16)[0]
                self.done = True
                if err:
                    raise_for(err)
                break
            if mlen < 20 or off + mlen > n:
                raise NetlinkError("malformed netlink message from the kernel")
            if mflags & NLM_F_DUMP_INTR:
                self.interrupted = True
            key = (mlen, buf[off + 16])
            layout = layouts.get(key)
            row = layout.row(buf, off) if layout is not None else None
            if row is None:
                row, layout = _walk(buf, off, mlen)
                if layout is not None:
                    layouts[key] = layout
            if row is not None:
                append(row)
            else:
                self.unreadable += 1
            off += (mlen + 3) & ~3
        return out


def dump(sink=None) -> DumpResult:
    """All conntrack entries of the current network namespace, as rows.

    With `sink`, each received batch of rows (a few hundred) is passed to
    sink(rows) and not kept: a million-entry table is counted without
    holding a million tuples (DumpResult.rows stays empty)."""
    res = DumpResult()
    p = _Parser()
    keep = res.rows.extend if sink is None else sink
    with _open() as sock:
        _request(sock, IPCTNL_MSG_CT_GET)
        chunks: queue.SimpleQueue = queue.SimpleQueue()
        ahead = threading.Semaphore(AHEAD)
        stop_r, stop_w = os.pipe()
        rx = threading.Thread(target=_receiver, args=(sock, chunks, ahead, stop_r), daemon=True)
        rx.start()
        try:
            while not p.done:
                item = chunks.get()
                ahead.release()
                if isinstance(item, OSError):
                    raise_for(item.errno)
                if isinstance(item, BaseException):
                    raise item
                rows = p.rows(*item)
                res.count += len(rows)
                keep(rows)
        finally:
            os.write(stop_w, b"x")          # the dump's end parsed (or an error): stop receiving
            ahead.release()
            rx.join()
            os.close(stop_r)
            os.close(stop_w)
    res.interrupted, res.unreadable = p.interrupted, p.unreadable
    return res


class DumpReader:
    """A dump read a little at a time (`read`), for callers that must not
    stop for the seconds a big table takes (the live table's reconcile).

    The kernel builds the next part of a dump when the previous one has
    been received, so a paused reader costs the kernel nothing and nothing
    is lost. The socket is opened in the namespace current at creation."""

    def __init__(self) -> None:
        self.sock = _open()
        self.p = _Parser()
        self.count = 0
        self._buf = bytearray(64 << 10)
        try:
            _request(self.sock, IPCTNL_MSG_CT_GET)
        except OSError as e:
            self.sock.close()
            raise_for(e.errno)

    @property
    def done(self) -> bool:
        return self.p.done

    def read(self, max_rows: int) -> list:
        """Up to about `max_rows` rows (whole received buffers); [] when done."""
        out: list = []
        while not self.p.done and len(out) < max_rows:
            try:
                n = self.sock.recv_into(self._buf)
            except OSError as e:
                self.p.done = True
                raise_for(e.errno)
            out += self.p.rows(self._buf, n)
        self.count += len(out)
        return out

    def close(self) -> None:
        self.sock.close()


def stats_cpu() -> list[dict[str, int]]:
    """Per-CPU conntrack counters, as `conntrack -S` shows them."""
    out = []
    with _open() as sock:
        _request(sock, IPCTNL_MSG_CT_GET_STATS_CPU)
        for buf, off, mlen, _ in _messages(sock):
            cpu = _BE16(buf, off + 18)[0]
            row = {"cpu": cpu}
            pos, end = off + 20, off + mlen
            while pos + 4 <= end:
                alen, atype = _NLA(buf, pos)
                if alen < 4:
                    break
                name = STATS_CPU.get(atype & 0x3fff)
                if name and alen >= 8:
                    row[name] = _BE32(buf, pos + 4)[0]
                pos += (alen + 3) & ~3
            out.append(row)
    return out


def stats_global() -> dict[str, int]:
    """{'count': entries in this namespace, 'max': nf_conntrack_max}."""
    out: dict[str, int] = {}
    with _open() as sock:
        _request(sock, IPCTNL_MSG_CT_GET_STATS, NLM_F_ACK)   # a single reply, then the ack
        for buf, off, mlen, _ in _messages(sock):
            pos, end = off + 20, off + mlen
            while pos + 4 <= end:
                alen, atype = _NLA(buf, pos)
                if alen < 4:
                    break
                t = atype & 0x3fff
                if t == CTA_STATS_GLOBAL_ENTRIES:
                    out["count"] = _BE32(buf, pos + 4)[0]
                elif t == CTA_STATS_GLOBAL_MAX_ENTRIES:
                    out["max"] = _BE32(buf, pos + 4)[0]
                pos += (alen + 3) & ~3
    return out
