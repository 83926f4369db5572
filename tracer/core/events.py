"""Events and their decoding from the structs in bpf/events.h (ctypes
mirror; tests check the sizes against the C side)."""

from __future__ import annotations

import ctypes as ct
import socket
from dataclasses import dataclass, field

from tracer.core.conntrack import proto_name


class DropEventC(ct.Structure):
    _fields_ = [("ts_ns", ct.c_uint64), ("seq", ct.c_uint64), ("netns_cookie", ct.c_uint64),
                ("netns", ct.c_uint32), ("cpu", ct.c_uint32), ("family", ct.c_uint8),
                ("proto", ct.c_uint8), ("ct_attached", ct.c_uint8), ("kind", ct.c_uint8),
                ("sport", ct.c_uint16), ("dport", ct.c_uint16), ("saddr", ct.c_uint8 * 16),
                ("daddr", ct.c_uint8 * 16), ("has_orig", ct.c_uint8), ("fragment", ct.c_uint8),
                ("clash_candidate", ct.c_uint8), ("pad", ct.c_uint8), ("osport", ct.c_uint16), ("odport", ct.c_uint16),
                ("osaddr", ct.c_uint8 * 16), ("odaddr", ct.c_uint8 * 16)]


class DropKeyC(ct.Structure):
    _fields_ = [("netns", ct.c_uint32), ("family", ct.c_uint8), ("proto", ct.c_uint8),
                ("ct_attached", ct.c_uint8), ("pad", ct.c_uint8), ("saddr", ct.c_uint8 * 16)]


class SrcKeyC(ct.Structure):
    _fields_ = [("netns", ct.c_uint32), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3),
                ("addr", ct.c_uint8 * 16)]


class SrcValC(ct.Structure):
    _fields_ = [("inserts", ct.c_uint64), ("deletes", ct.c_uint64), ("table_full", ct.c_uint64),
                ("insert_failed", ct.c_uint64)]


class CpuKeyC(ct.Structure):
    _fields_ = [("netns_cookie", ct.c_uint64), ("netns", ct.c_uint32), ("cpu", ct.c_uint16),
                ("ct_attached", ct.c_uint8), ("pad", ct.c_uint8)]


# bpf/events.h: enum of the `stats` array
STATS = ("drops", "ctless", "emitted", "sampled_out", "submit_failed", "keys_full", "seq_full")

# bpf/events.h: enum of the kprobe backend's `ct_stats` array
CT_STATS = ("table_full", "inserts", "insert_failed", "deletes", "early_drops", "clash_resolved",
            "emitted", "sampled_out", "submit_failed", "keys_full", "args_missed", "create_refused",
            "not_inserted")
KIND_NF_DROP, KIND_TABLE_FULL, KIND_INSERT_FAILED, KIND_RULE = range(4)

# Drop reasons shown to users (every view, metric and finding uses these).
TABLE_FULL = "table_full"        # conntrack refused a new entry: the table was full
INSERT_FAILED = "insert_failed"  # a clash at confirm: NAT port exhaustion, the UDP DNS race
INVALID = "invalid"              # conntrack refused the packet with room in the table (a tracker verdict)
RULE = "rule"                    # a ruleset DROP (raw table, INVALID state, filter, ...)
UNKNOWN = "unknown"              # the kernel gave no way to tell
REASONS = (TABLE_FULL, INSERT_FAILED, INVALID, RULE, UNKNOWN)
_KIND_REASON = {KIND_TABLE_FULL: TABLE_FULL, KIND_INSERT_FAILED: INSERT_FAILED, KIND_RULE: RULE}


def addr(family: int, raw) -> str:
    b = bytes(raw)
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, b[:4])
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, b)
    return ""


@dataclass
class Drop:
    """One dropped packet. src/sport/dst/dport are what the sender used (the
    entry's original tuple where one was attached); `translated` is the
    packet as it was dropped when NAT had changed it."""
    ts: float            # seconds since the epoch
    netns: int
    cpu: int
    family: str          # "ipv4", "ipv6", ""
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    reason: str
    ct_attached: bool
    seq: int = 0
    container: str | None = None
    netns_cookie: int = 0
    translated: tuple[str, int, str, int] | None = None     # (src, sport, dst, dport) after NAT
    fragment: bool = False           # a non-first fragment: no ports
    clash_candidate: bool = False    # an entry that may have clashed at confirm (see classify.py)

    @property
    def netns_key(self) -> tuple[int, int]:
        """The namespace's identity for per-namespace state: (cookie, inode);
        inodes are reused quickly, cookies never (0 where the kernel has none)."""
        return (self.netns_cookie, self.netns)

    def to_dict(self) -> dict:
        t = self.translated
        return {"ts": round(self.ts, 6), "reason": self.reason, "family": self.family,
                "proto": self.proto, "src": self.src, "sport": self.sport, "dst": self.dst,
                "dport": self.dport, "netns": self.netns, "cpu": self.cpu,
                "ct_attached": self.ct_attached, "container": self.container,
                "translated": None if t is None else
                {"src": t[0], "sport": t[1], "dst": t[2], "dport": t[3]},
                "fragment": self.fragment}


def decode_drop(data, boot_offset: float) -> Drop:
    """A Drop from raw perf-buffer bytes (size-checked); reason filled later
    for drops the kernel side could not classify."""
    if len(data) < ct.sizeof(DropEventC):
        raise ValueError(f"short drop event: {len(data)} < {ct.sizeof(DropEventC)} bytes")
    e = DropEventC.from_buffer_copy(data[:ct.sizeof(DropEventC)])
    fam = {4: "ipv4", 6: "ipv6"}.get(e.family, "")
    src, dst = addr(e.family, e.saddr), addr(e.family, e.daddr)
    d = Drop(ts=boot_offset + e.ts_ns / 1e9, netns=e.netns, cpu=e.cpu, family=fam,
             proto=proto_name(e.proto), src=src, sport=e.sport, dst=dst, dport=e.dport,
             reason=_KIND_REASON.get(e.kind, ""), ct_attached=bool(e.ct_attached), seq=e.seq,
             netns_cookie=e.netns_cookie, fragment=bool(e.fragment),
             clash_candidate=bool(e.clash_candidate))
    if e.has_orig:
        o = (addr(e.family, e.osaddr), e.osport, addr(e.family, e.odaddr), e.odport)
        if o != (src, e.sport, dst, e.dport) and not e.fragment:
            d.translated = (src, e.sport, dst, e.dport)
        d.src, d.sport, d.dst, d.dport = o
    return d


@dataclass
class SourceCounts:
    """Exact counts of one original source in one namespace, from BPF maps.
    `rule` is netfilter drops that conntrack did not cause; on the tracepoint
    backend, `netfilter` is drops without an entry whose cause is told apart
    only in total (the kernel's per-CPU `drop` stat), never per source."""
    netns: int
    src: str
    family: str = ""
    inserts: int = 0
    deletes: int = 0
    table_full: int = 0
    insert_failed: int = 0
    rule: int = 0
    netfilter: int = 0

    @property
    def drops(self) -> int:
        return self.table_full + self.insert_failed + self.rule + self.netfilter


@dataclass
class Counters:
    """What every backend's counters() returns: exact in-kernel totals,
    per source, and what was lost on the way. Fields a backend cannot know
    are None."""
    backend: str
    netfilter_drops: int = 0          # skb:kfree_skb NETFILTER_DROP, after the backend's own
    ctless_drops: int = 0             # ... of which without a conntrack entry
    table_full: dict[int, int] = field(default_factory=dict)   # by netns inode
    by_reason: dict[str, int] = field(default_factory=dict)    # drops per reason (REASONS), exact
    reasons_by_netns: dict[int, dict[str, int]] = field(default_factory=dict)   # the same, per inode
    conntrack: dict[str, int] | None = None   # the conntrack probes' totals (CT_STATS), kprobe only
    sources: list[SourceCounts] = field(default_factory=list)
    events_sent: int = 0
    over_rate_limit: int = 0          # events not sent (rate limit); their counts are exact
    lost: int = 0                     # events lost (perf buffer full)
    keys_full: int = 0                # per-source map full: in the totals, not per source
    missed: int | None = None         # probe runs the kernel skipped; None: unknown
    attached: list[str] = field(default_factory=list)
    not_attached: list[str] = field(default_factory=list)

    def drops_by_src(self, netns: int) -> dict[str, int]:
        """Exact cumulative drops of packets from each source, in one namespace."""
        out: dict[str, int] = {}
        for s in self.sources:
            if s.netns == netns and s.drops:
                out[s.src] = out.get(s.src, 0) + s.drops
        return out

    def to_dict(self) -> dict:
        from dataclasses import asdict
        d = asdict(self)
        d["table_full"] = {str(k): v for k, v in self.table_full.items()}
        d["reasons_by_netns"] = {str(k): v for k, v in self.reasons_by_netns.items()}
        return d
