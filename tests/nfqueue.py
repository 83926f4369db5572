"""A minimal NFQUEUE consumer (nfnetlink_queue, by hand), for tests that
must hold packets while their conntrack entries are still unconfirmed.

A packet sent to userspace by an NFQUEUE rule keeps its unconfirmed entry
until the verdict; holding two packets after NAT and before confirmation
makes the race that NAT port allocation cannot see (it looks only at
confirmed entries): the second one clashes at confirm time.

Message and attribute numbers: include/uapi/linux/netfilter/nfnetlink_queue.h
(UAPI). Integers in attributes are big-endian.
"""

from __future__ import annotations

import errno
import select
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NF_DROP, NF_ACCEPT = 0, 1
NLMSG_ERROR = 2


def _attr(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


class Queue:
    """Bound to queue `num` in the namespace current at creation."""

    def __init__(self, num: int):
        self.num = num
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = 0
        self._config(_attr(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META)))

    def _send(self, mtype: int, payload: bytes, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> None:
        self.seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num)) + payload
        self.sock.send(struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | mtype,
                                   flags, self.seq, 0) + body)

    def _config(self, payload: bytes) -> None:
        self._send(NFQNL_MSG_CONFIG, payload)
        data = self.sock.recv(65536)
        mlen, mtype = struct.unpack_from("=IH", data, 0)
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, 16)[0]
            if err:
                raise OSError(err, f"nfqueue config: {errno.errorcode.get(err, err)}")

    def packets(self, n: int, timeout: float = 5.0) -> list[int]:
        """Wait for n queued packets; return their ids (verdicts not given)."""
        ids: list[int] = []
        while len(ids) < n:
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                raise TimeoutError(f"nfqueue {self.num}: {len(ids)} of {n} packets arrived")
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                mlen, mtype = struct.unpack_from("=IH", data, off)
                if mlen < 16:
                    break
                if mtype & 0xff == NFQNL_MSG_PACKET and mtype >> 8 == NFNL_SUBSYS_QUEUE:
                    pos, end = off + 20, off + mlen
                    while pos + 4 <= end:
                        alen, atype = struct.unpack_from("=HH", data, pos)
                        if alen < 4:
                            break
                        if atype & 0x3fff == NFQA_PACKET_HDR:
                            ids.append(struct.unpack_from(">I", data, pos + 4)[0])
                        pos += (alen + 3) & ~3
                off += (mlen + 3) & ~3
        return ids

    def verdict(self, packet_id: int, verdict: int = NF_ACCEPT) -> None:
        self._send(NFQNL_MSG_VERDICT, _attr(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id)),
                   flags=NLM_F_REQUEST)

    def close(self) -> None:
        try:
            self._send(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_UNBIND,
                                                                         socket.AF_INET)),
                       flags=NLM_F_REQUEST)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
