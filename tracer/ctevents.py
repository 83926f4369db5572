"""Conntrack inserts and deletes from ctnetlink events (NEW and DESTROY
multicast groups), for kernels where no probe can see them.

The kernel drops events when the socket's receive buffer is full and says
so once with ENOBUFS on the next recv. That is counted (never silent), and
the caller resyncs from a dump (ctnetlink.dump()) to get exact live state.
"""

from __future__ import annotations

import errno
import select
import socket
from dataclasses import dataclass, field

from tracer import ctnetlink
from tracer import netns as ns

NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
INSERT, DELETE = "insert", "delete"


@dataclass
class EventBatch:
    events: list = field(default_factory=list)     # (INSERT|DELETE, row)
    overrun: bool = False                          # events were lost: resync


class CtEvents:
    """A subscription to one namespace's conntrack NEW/DESTROY events."""

    def __init__(self, netns: str | None = None, rcvbuf: int = 32 << 20, updates: bool = False):
        """`updates`: also state changes (UPDATE group; they arrive as INSERT
        events of a known entry)."""
        with ns.entered(netns):
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                              | socket.SOCK_CLOEXEC, ctnetlink.NETLINK_NETFILTER)
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
        self.sock = s
        self.netns = netns
        self.overruns = 0          # ENOBUFS seen: one or more events lost each time
        self.inserts = 0
        self.deletes = 0
        self._buf = bytearray(1 << 20)
        self._layouts: dict = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float = 0.0) -> EventBatch:
        """Events received so far (waiting up to `timeout` seconds for the first)."""
        out = EventBatch()
        if timeout and not select.select([self.sock], [], [], timeout)[0]:
            return out
        buf = self._buf
        while True:
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
                mlen, mtype = ctnetlink._HDR(buf, off)[:2]
                if mlen < 20 or off + mlen > n:
                    break
                kind = INSERT if mtype & 0xFF == IPCTNL_MSG_CT_NEW else \
                    DELETE if mtype & 0xFF == IPCTNL_MSG_CT_DELETE else None
                if kind is not None and mtype >> 8 == ctnetlink.NFNL_SUBSYS_CTNETLINK:
                    key = (mlen, buf[off + 16], kind)
                    layout = self._layouts.get(key)
                    row = layout.row(buf, off) if layout is not None else None
                    if row is None:
                        row, layout = ctnetlink._walk(buf, off, mlen)
                        if layout is not None:
                            self._layouts[key] = layout
                    if row is not None:
                        out.events.append((kind, row))
                        if kind is INSERT:
                            self.inserts += 1
                        else:
                            self.deletes += 1
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
