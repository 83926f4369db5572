"""Pure core of `cttrace snapshot`: fold conntrack entries into breakdowns.

Every reader (text exports in tracer/formats/export.py, the live ctnetlink
dump in tracer/kernel/ctnetlink.py) turns entries into *rows* of seven raw
columns:

    (proto, state, src, dst, dport, extra1, extra2)

in whatever raw form is cheapest for it (bytes from a regex, ints and packed
addresses from netlink), together with a *decoder* that turns each distinct
raw value into its meaning. Counting happens column by column with
collections.Counter (C speed); decoding happens once per distinct value.
That keeps a 1,000,000-entry table in the same league as awk one-liners
while producing every breakdown from one pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from tracer.core.conntrack import (DPORT, DST, EXTRA1, EXTRA2, FLAG_NAMES, PORT_PROTOS, PROTO,
                                   SRC, STATE, proto_name)



class Decoder(Protocol):
    """Turns one reader's raw column values into meanings (None = invalid)."""

    def proto(self, raw: Any) -> int | None: ...
    def state(self, proto: int, raw: Any) -> str: ...
    def addr(self, raw: Any) -> tuple[str, str] | None: ...
    def dport(self, raw: Any) -> int | None: ...
    def extra(self, raw: tuple) -> tuple[int, int | None, int]:
        """(extra1, extra2) -> (flag bits, mark or None, zone)"""


_COUNT = itemgetter(1)
_SRC = itemgetter(SRC)
_DST = itemgetter(DST)
_COMBO = itemgetter(PROTO, STATE, DPORT, EXTRA1, EXTRA2)


@dataclass
class Columns:
    """Raw counts; mergeable and small (one key per distinct value).

    `combo` counts the low-cardinality columns together
    (proto, state, dport, extra1, extra2); addresses are counted apart.
    """

    combo: Counter = field(default_factory=Counter)
    src: Counter = field(default_factory=Counter)
    dst: Counter = field(default_factory=Counter)
    total: int = 0

    def add_rows(self, rows: list[tuple]) -> None:
        self.combo.update(map(_COMBO, rows))
        self.src.update(map(_SRC, rows))
        self.dst.update(map(_DST, rows))
        self.total += len(rows)

    def merge(self, other: "Columns") -> None:
        self.combo.update(other.combo)
        self.src.update(other.src)
        self.dst.update(other.dst)
        self.total += other.total


@dataclass
class Summary:
    """Decoded breakdowns of a set of entries (all maps: str key -> count)."""

    total: int = 0
    by_family: Counter = field(default_factory=Counter)
    by_proto: Counter = field(default_factory=Counter)
    by_state: Counter = field(default_factory=Counter)        # TCP states
    by_proto_state: Counter = field(default_factory=Counter)  # "sctp/COOKIE_WAIT"
    by_src: Counter = field(default_factory=Counter)
    by_dst: Counter = field(default_factory=Counter)
    by_dport: Counter = field(default_factory=Counter)        # port protocols only
    by_proto_dport: Counter = field(default_factory=Counter)  # "udp/53"
    by_zone: Counter = field(default_factory=Counter)
    by_mark: Counter = field(default_factory=Counter)
    by_flags: Counter = field(default_factory=Counter)

    BREAKDOWNS = ("by_family", "by_proto", "by_state", "by_proto_state", "by_src",
                  "by_dst", "by_dport", "by_proto_dport", "by_zone", "by_mark",
                  "by_flags")

    @classmethod
    def from_columns(cls, cols: Columns, dec: Decoder) -> "Summary":
        s = cls(total=cols.total)
        # Split the combined counts by raw sub-key first (plain dict work),
        # then decode each distinct sub-key once.
        pstate: dict = {}
        pdport: dict = {}
        extra: dict = {}
        for (rp, rs, rd, x1, x2), n in cols.combo.items():
            k = (rp, rs)
            pstate[k] = pstate.get(k, 0) + n
            k = (rp, rd)
            pdport[k] = pdport.get(k, 0) + n
            k = (x1, x2)
            extra[k] = extra.get(k, 0) + n
        # plain dicts here: Counter's __missing__ is Python code, slow on new keys
        by_proto: dict = {}
        by_state: dict = {}
        by_proto_state: dict = {}
        by_dport: dict = {}
        by_proto_dport: dict = {}
        for (rp, rs), n in pstate.items():
            p = dec.proto(rp)
            name = proto_name(p)
            by_proto[name] = by_proto.get(name, 0) + n
            st = dec.state(p, rs)
            if st:
                k = f"{name}/{st}"
                by_proto_state[k] = by_proto_state.get(k, 0) + n
                if p == 6:
                    by_state[st] = by_state.get(st, 0) + n
        for (rp, rd), n in pdport.items():
            p = dec.proto(rp)
            if p in PORT_PROTOS:
                port = dec.dport(rd)
                if port is not None:
                    k = str(port)
                    by_dport[k] = by_dport.get(k, 0) + n
                    k = f"{proto_name(p)}/{port}"
                    by_proto_dport[k] = by_proto_dport.get(k, 0) + n
        s.by_proto.update(by_proto)
        s.by_state.update(by_state)
        s.by_proto_state.update(by_proto_state)
        s.by_dport.update(by_dport)
        s.by_proto_dport.update(by_proto_dport)
        for raw, n in extra.items():
            flags, mark, zone = dec.extra(raw)
            for bit, fname in FLAG_NAMES.items():
                if flags & bit:
                    s.by_flags[fname] += n
            if mark is not None:
                s.by_mark[str(mark)] += n
            s.by_zone[str(zone)] += n
        by_src: dict = {}
        by_family: dict = {}
        for raw, n in cols.src.items():
            fam, text = dec.addr(raw)
            by_src[text] = by_src.get(text, 0) + n
            by_family[fam] = by_family.get(fam, 0) + n
        by_dst: dict = {}
        for raw, n in cols.dst.items():
            text = dec.addr(raw)[1]
            by_dst[text] = by_dst.get(text, 0) + n
        s.by_src.update(by_src)
        s.by_family.update(by_family)
        s.by_dst.update(by_dst)
        return s

    def to_dict(self, top: int | None = None) -> dict:
        out: dict[str, Any] = {"total": self.total}
        others: dict[str, dict] = {}
        for name in self.BREAKDOWNS:
            # biggest first, ties by key (two C-level sorts; no Python key function)
            ranked = sorted(sorted(getattr(self, name).items()), key=_COUNT, reverse=True)
            if top is not None and len(ranked) > top:
                rest = ranked[top:]
                others[name] = {"keys": len(rest), "entries": sum(n for _, n in rest)}
                ranked = ranked[:top]
            out[name] = dict(ranked)
        if top is not None:
            out["others"] = others
        return out
