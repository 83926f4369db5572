"""Conntrack inserts, updates and deletes from ctnetlink events (NEW,
UPDATE and DESTROY multicast groups), for kernels where no probe can see them.

The kernel drops events when the socket's receive buffer is full and says
so once with ENOBUFS on the next recv. That is counted (never silent), and
the caller reconciles from a dump (tracer/live/source.py).

`poll` does bounded work: at most `max_events` messages per call (the rest
stay queued in the socket, and `EventBatch.more` says so), so a flood of
events cannot keep the caller from rendering or from its deadline.

NEW and UPDATE both arrive as IPCTNL_MSG_CT_NEW; the kernel marks a new
entry's message with NLM_F_CREATE|NLM_F_EXCL (ctnetlink_conntrack_event in
net/netfilter/nf_conntrack_netlink.c), so an update is never an insert.

An entry only sends events if it carries the event extension: with
net.netfilter.nf_conntrack_events=2 (the default since Linux 5.19) only
entries created while a listener existed do, and with 0 none do.
"""

from __future__ import annotations

import errno
import select
import socket
from dataclasses import dataclass, field

from tracer.kernel import ctnetlink
from tracer.kernel import netns as ns

NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
NLM_F_CREATE = 0x400
INSERT, UPDATE, DELETE = "insert", "update", "delete"
EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"


def events_mode() -> int | None:
    """net.netfilter.nf_conntrack_events of the current namespace: 0 off,
    1 on, 2 auto (entries made while a listener exists); None if unknown."""
    try:
        with open(EVENTS_SYSCTL) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class EventBatch:
    events: list = field(default_factory=list)     # (INSERT|UPDATE|DELETE, row)
    overrun: bool = False                          # events were lost: reconcile
    more: bool = False                             # the budget ended the call; more are queued


class CtEvents:
    """A subscription to one namespace's conntrack NEW/DESTROY events."""

    def __init__(self, netns: str | None = None, rcvbuf: int = 32 << 20, updates: bool = False,
                 sock: socket.socket | None = None):
        """`updates`: also state changes (UPDATE group, UPDATE events).
        `sock`: read this socket instead of subscribing (recorded messages
        through a socketpair, in tests)."""
        self.sock = sock if sock is not None else self._subscribe(netns, rcvbuf, updates)
        self.netns = netns
        self.overruns = 0          # ENOBUFS seen: one or more events lost each time
        self.inserts = 0
        self.updates = 0
        self.deletes = 0
        self._buf = bytearray(1 << 20)
        self._layouts: dict = {}

    @staticmethod
    def _subscribe(netns: str | None, rcvbuf: int, updates: bool) -> socket.socket:
        with ns.entered(netns):
            try:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, ctnetlink.NETLINK_NETFILTER)
            except OSError as e:
                raise ctnetlink.NetlinkError(f"cannot subscribe to conntrack events: {e.strerror} "
                                             "(needs root; modprobe nf_conntrack_netlink)") from None
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)          # SO_RCVBUFFORCE
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            groups = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
            if updates:
                groups |= 1 << (NFNLGRP_CONNTRACK_UPDATE - 1)
            s.bind((0, groups))
        except OSError as e:
            s.close()
            raise ctnetlink.NetlinkError(f"cannot subscribe to conntrack events: {e.strerror} "
                                         "(needs root; modprobe nf_conntrack_netlink)") from None
        return s

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float = 0.0, max_events: int | None = None) -> EventBatch:
        """Events received so far (waiting up to `timeout` seconds for the
        first), at most about `max_events` (whole receive buffers)."""
        out = EventBatch()
        if timeout and not select.select([self.sock], [], [], timeout)[0]:
            return out
        buf = self._buf
        events = out.events
        append = events.append
        layouts = self._layouts
        while True:
            if max_events is not None and len(events) >= max_events:
                out.more = True
                return out
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    out.overrun = True
                    continue
                raise
            off = 0
            while off + 16 <= n:
                mlen, mtype, mflags = ctnetlink._HDR(buf, off)[:3]
                if mlen < 20 or off + mlen > n:
                    break
                if mtype >> 8 == ctnetlink.NFNL_SUBSYS_CTNETLINK:
                    t = mtype & 0xFF
                    kind = DELETE if t == IPCTNL_MSG_CT_DELETE else \
                        (INSERT if mflags & NLM_F_CREATE else UPDATE) if t == IPCTNL_MSG_CT_NEW else None
                    if kind is not None:
                        key = (mlen, buf[off + 16], kind)
                        layout = layouts.get(key)
                        row = layout.row(buf, off) if layout is not None else None
                        if row is None:
                            row, layout = ctnetlink._walk(buf, off, mlen)
                            if layout is not None:
                                layouts[key] = layout
                        if row is not None:
                            append((kind, row))
                            if kind is INSERT:
                                self.inserts += 1
                            elif kind is DELETE:
                                self.deletes += 1
                            else:
                                self.updates += 1
                off += (mlen + 3) & ~3

    def resync(self) -> list:
        """The namespace's whole table now (after an overrun)."""
        with ns.entered(self.netns):
            return ctnetlink.dump().rows

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "CtEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
