"""Pure live-table state for `cttrace top`: entries by source, destination,
port and state, followed from a dump plus insert/update/delete events, and
per-interval rates. No I/O here: the engine (tracer/top.py) feeds it.

Rows are ctnetlink rows: (proto, state, src, dst, dport, flags, (mark, zone), sport)
with raw addresses; an entry is identified by (proto, src, sport, dst, dport, zone).
"""

from __future__ import annotations

import socket
from collections import Counter, deque
from dataclasses import dataclass, field

from tracer.conntrack import PORT_PROTOS, STATE_NAMES, proto_name

GROUPS = ("src", "dst", "dport", "state", "container")
SORTS = ("entries", "inserts", "deletes", "drops")


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _state(proto: int, raw) -> str:
    if raw is None:
        return proto_name(proto)
    names = STATE_NAMES.get(proto, ())
    return names[raw] if raw < len(names) else str(raw)


@dataclass
class Interval:
    """Rates of one interval: per group key and for the table."""
    seconds: float
    inserts: Counter = field(default_factory=Counter)     # by source
    deletes: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)


class LiveTable:
    """Entries of one namespace's table, with counts kept per dimension."""

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[str, str, str, str]] = {}
        self.by = {g: Counter() for g in ("src", "dst", "dport", "state")}
        self.inserts: Counter = Counter()      # cumulative, by source
        self.deletes: Counter = Counter()
        self._addr: dict[bytes, str] = {}

    def _a(self, raw: bytes) -> str:
        a = self._addr.get(raw)
        if a is None:
            if len(self._addr) > 200_000:      # a cache, not a history: stay bounded
                self._addr.clear()
            a = self._addr[raw] = _addr(raw)
        return a

    @staticmethod
    def key(row: tuple) -> tuple:
        return (row[0], row[2], row[7] if len(row) > 7 else None, row[3], row[4], row[6][1])

    def _dims(self, row: tuple) -> tuple[str, str, str, str]:
        proto = row[0]
        dport = f"{proto_name(proto)}/{row[4]}" if proto in PORT_PROTOS and row[4] is not None \
            else proto_name(proto)
        return (self._a(row[2]), self._a(row[3]), dport, _state(proto, row[1]))

    def _add(self, k: tuple, dims: tuple) -> None:
        self.entries[k] = dims
        for g, v in zip(("src", "dst", "dport", "state"), dims):
            self.by[g][v] += 1

    def _remove(self, k: tuple) -> tuple | None:
        dims = self.entries.pop(k, None)
        if dims is not None:
            for g, v in zip(("src", "dst", "dport", "state"), dims):
                c = self.by[g]
                c[v] -= 1
                if c[v] <= 0:
                    del c[v]
        return dims

    def reset(self, rows: list) -> None:
        """Start over from a dump (at start, and after lost events)."""
        self.entries.clear()
        for c in self.by.values():
            c.clear()
        for row in rows:
            self._add(self.key(row), self._dims(row))

    def insert(self, row: tuple) -> None:
        k = self.key(row)
        dims = self._dims(row)
        if k in self.entries:            # an update (state change) of a known entry
            self._remove(k)
        else:
            self.inserts[dims[0]] += 1
        self._add(k, dims)

    def delete(self, row: tuple) -> None:
        dims = self._remove(self.key(row))
        if dims is not None:
            self.deletes[dims[0]] += 1

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class Sample:
    """Cumulative counters at one moment (from the kernel and the probes)."""
    t: float
    inserts: Counter
    deletes: Counter
    drops: Counter            # by source address, exact (BPF maps)
    kernel: dict              # summed per-CPU stats of the namespace
    count: int | None
    max: int | None


class Rates:
    """Per-interval rates from consecutive samples, totals since the first
    sample, and a short history."""

    def __init__(self, history: int = 120):
        self.first: Sample | None = None
        self.prev: Sample | None = None
        self.last: dict = {}
        self.fill_hist: deque = deque(maxlen=history)
        self.drop_hist: deque = deque(maxlen=history)

    def update(self, s: Sample) -> dict:
        p, self.prev = self.prev, s
        if self.first is None:
            self.first = s
        f = self.first
        self.totals = {k: max(s.kernel.get(k, 0) - f.kernel.get(k, 0), 0)
                       for k in ("drop", "early_drop", "insert_failed")}
        self.totals["inserts"] = sum(s.inserts.values()) - sum(f.inserts.values())
        self.totals["deletes"] = sum(s.deletes.values()) - sum(f.deletes.values())
        self.src_drops = {k: v - f.drops.get(k, 0) for k, v in s.drops.items() if v != f.drops.get(k, 0)}
        if s.count is not None and s.max:
            self.fill_hist.append(s.count / s.max)
        if p is None or s.t <= p.t:
            self.last = {"seconds": 0.0, "table": {}, "inserts": {}, "deletes": {}, "drops": {},
                         "src_drops": self.src_drops}
            return self.last
        dt = s.t - p.t

        def per_s(cur: Counter, old: Counter) -> dict:
            return {k: (v - old.get(k, 0)) / dt for k, v in cur.items() if v != old.get(k, 0)}

        table = {k: max(s.kernel.get(k, 0) - p.kernel.get(k, 0), 0) / dt
                 for k in ("drop", "early_drop", "insert_failed", "invalid")}
        table["inserts"] = (sum(s.inserts.values()) - sum(p.inserts.values())) / dt
        table["deletes"] = (sum(s.deletes.values()) - sum(p.deletes.values())) / dt
        self.drop_hist.append(table["drop"])
        self.last = {"seconds": dt, "table": table, "inserts": per_s(s.inserts, p.inserts),
                     "deletes": per_s(s.deletes, p.deletes), "drops": per_s(s.drops, p.drops),
                     "src_drops": self.src_drops}
        return self.last


def top_rows(live: LiveTable, rates: dict, group: str, sort: str, n: int,
             name_of) -> list[dict]:
    """The biggest groups: key, entries, share, rates, container name."""
    total = len(live) or 1
    members: dict = {}
    if group == "container":
        counts: Counter = Counter()
        for src, c in live.by["src"].items():
            name = name_of(src) or src
            counts[name] += c
            members.setdefault(name, []).append(src)
    else:
        counts = live.by[group]
    rows = []
    for key, entries in counts.items():
        if group in ("src", "container"):
            srcs = [key] if group == "src" else members[key]
            ins = sum(rates.get("inserts", {}).get(s, 0.0) for s in srcs)
            dels = sum(rates.get("deletes", {}).get(s, 0.0) for s in srcs)
            drops = sum(rates.get("drops", {}).get(s, 0.0) for s in srcs)
        else:
            ins = dels = drops = None
        rows.append({"key": key, "entries": entries, "share": entries / total,
                     "inserts_per_s": ins, "deletes_per_s": dels, "drops_per_s": drops,
                     "container": name_of(key) if group == "src" else None,
                     "drops_total": rates.get("src_drops", {}).get(key, 0) if group == "src" else None})
    # sources with drops but no live entries matter too (their flows were refused)
    if group == "src":
        for src in set(rates.get("drops", {})) | set(rates.get("src_drops", {})):
            if src not in counts:
                rows.append({"key": src, "entries": 0, "share": 0.0, "inserts_per_s": 0.0,
                             "deletes_per_s": 0.0, "drops_per_s": rates.get("drops", {}).get(src, 0.0),
                             "container": name_of(src),
                             "drops_total": rates.get("src_drops", {}).get(src, 0)})
    keyf = {"entries": "entries", "inserts": "inserts_per_s", "deletes": "deletes_per_s",
            "drops": "drops_per_s"}[sort]
    rows.sort(key=lambda r: (-(r[keyf] or 0), -r["entries"], str(r["key"])))
    return rows[:n]
