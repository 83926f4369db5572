"""Events and their decoding from the structs of bpf/events.h (their
Python side is generated: tracer/backends/abi.py)."""

from __future__ import annotations

import ctypes as ct
import socket
from dataclasses import asdict, dataclass, field

from tracer.backends import abi
from tracer.core.conntrack import proto_name


# Drop reasons shown to users (every view, metric and finding uses these).
TABLE_FULL = "table_full"        # conntrack refused a new entry: the table was full
INSERT_FAILED = "insert_failed"  # a clash at confirm: NAT port exhaustion, the UDP DNS race
INVALID = "invalid"              # conntrack refused the packet with room in the table (a tracker verdict)
RULE = "rule"                    # a ruleset DROP (raw table, INVALID state, filter, ...)
UNKNOWN = "unknown"              # the kernel gave no way to tell
REASONS = (TABLE_FULL, INSERT_FAILED, INVALID, RULE, UNKNOWN)


def no_drops() -> dict[str, int]:
    """{reason: 0} for every reason of REASONS (a namespace's drops by reason, empty)."""
    return dict.fromkeys(REASONS, 0)


_KIND_REASON = {abi.KIND_TABLE_FULL: TABLE_FULL, abi.KIND_INSERT_FAILED: INSERT_FAILED, abi.KIND_RULE: RULE}


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
    clash_candidate: bool = False    # an entry that may have clashed at confirm (see tracer/core/classify.py)
    dst_container: str | None = None     # the destination side: who publishes dst:dport (attribution)

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
                "dst_container": self.dst_container,
                "translated": None if t is None else
                {"src": t[0], "sport": t[1], "dst": t[2], "dport": t[3]},
                "fragment": self.fragment}


def decode_drop(data, boot_offset: float) -> Drop:
    """A Drop from raw ring-buffer bytes (size-checked); reason filled later
    for drops the kernel side could not classify."""
    size = ct.sizeof(abi.DropEvent)
    if len(data) < size:
        raise ValueError(f"short drop event: {len(data)} < {size} bytes")
    e = abi.DropEvent.from_buffer_copy(data[:size])
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
    def all_drops(self) -> int:
        """Every netfilter drop of this source, whatever its cause."""
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
    lost: int = 0                     # events lost (ring buffer full)
    keys_full: int = 0                # per-source map full: in the totals, not per source
    missed: int | None = None         # probe runs the kernel skipped; None: unknown
    attached: list[str] = field(default_factory=list)
    not_attached: list[str] = field(default_factory=list)

    def drops_by_src(self, netns: int) -> dict[str, int]:
        """Exact cumulative drops of packets from each source, in one namespace."""
        out: dict[str, int] = {}
        for s in self.sources:
            if s.netns == netns and s.all_drops:
                out[s.src] = out.get(s.src, 0) + s.all_drops
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["table_full"] = {str(k): v for k, v in self.table_full.items()}
        d["reasons_by_netns"] = {str(k): v for k, v in self.reasons_by_netns.items()}
        return d
