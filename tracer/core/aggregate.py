"""Pure live-table state for `cttrace top`, `serve` and `capture`: entries
by source, destination, port and state, followed from dumps plus
insert/update/delete events, and per-interval rates. No I/O here: the feed
(tracer/live/source.py) drives it.

Rows are ctnetlink rows (tracer/ctnetlink.py, R_* columns) with raw
addresses. An entry is identified by (proto, zone, src, dst, sport, dport)
or, for ICMP/ICMPv6, (proto, zone, src, dst, id, type, code): two pings are
two entries, as in the kernel.

Memory: per entry, its identity packed into 15 bytes (IPv4; 39 for IPv6)
and a one-byte code (state, "made before we listened", reconcile
generation), kept as fixed-size records in a compact store
(tracer/core/entries.py): about 17 bytes per IPv4 entry (a dict of bytes
keys cost about 90). Everything the views show (counts per source,
destination, port, state) lives in the per-group Counters, whose size
follows the number of distinct keys, not the number of entries.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import itemgetter, ne

from tracer.core.conntrack import PORT_PROTOS, STATE_NAMES, proto_name
from tracer.core.entries import DELETED, EntryStore
from tracer.core.forecast import Schedule
from tracer.core.forecast import _ROW_KEY as _SCHED_KEY

GROUPS = ("src", "dst", "dport", "state", "container", "pod")
SORTS = ("entries", "inserts", "deletes", "drops")
DIMS = ("src", "dst", "dport", "state")

_KEY = struct.Struct(">BHHH")
_KEYP = _KEY.pack
_KEYU = _KEY.unpack_from

# The code of an entry: state number (STATE_NONE: a protocol without
# states) | LEGACY | generation << 6, one byte. Generations are 0-2: the
# store keeps 0xFF (generation 3) for deleted records (entries.DELETED).
STATE_MASK, STATE_NONE = 0x1F, 0x1F
LEGACY = 0x20          # seen in a dump only: may have no event extension
GEN_SHIFT, GEN_MASK, GENS = 6, 0xC0, 3


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _state(proto: int, raw) -> str:
    if raw is None or raw == STATE_NONE:
        return proto_name(proto)
    names = STATE_NAMES.get(proto, ())
    return names[raw] if raw < len(names) else str(raw)


_R_STATE = itemgetter(1)
_R_SRC = itemgetter(2)
_R_DST = itemgetter(3)
_R_PDS = itemgetter(0, 4, 1)      # (proto, dport, state): one count gives ports and states
_R_PROTO, _R_DPORT, _R_MZ, _R_SPORT, _R_ICMP, _R_RSRC = (itemgetter(i) for i in (0, 4, 6, 7, 8, 10))
_ZONE = itemgetter(1)


def entry_key(row: tuple, tail: bytes = b"") -> bytes:
    """The identity of the entry a ctnetlink row describes (+ `tail`: a
    bulk load's records are key + code byte)."""
    ic = row[8] if len(row) > 8 else None
    if ic is None:
        return _KEYP(row[0], row[6][1], row[7] or 0, row[4] or 0) + row[2] + row[3] + tail
    return _KEYP(row[0], row[6][1], ic & 0xFFFF, ic >> 16) + row[2] + row[3] + tail


def load_records(rows: list, codes) -> tuple[bytes, int] | None:
    """A batch of rows as one blob of bulk-load records (entry_key(row) +
    codes[state], back to back) and the record size, built by C loops
    (no Python call per row: about 3x faster than entry_key per row); None
    if a row needs entry_key's own rules (ICMP, a protocol without ports,
    IPv4 and IPv6 mixed): the caller then goes row by row."""
    try:
        if list(map(_R_ICMP, rows)).count(None) != len(rows):
            return None
        heads = list(map(_KEYP, map(_R_PROTO, rows), map(_ZONE, map(_R_MZ, rows)),
                         map(_R_SPORT, rows), map(_R_DPORT, rows)))
    except (struct.error, IndexError, TypeError):     # a port is None: no ports
        return None
    if not heads:
        return None
    blob = b"".join(chain.from_iterable(zip(heads, map(_R_SRC, rows), map(_R_DST, rows),
                                            map(codes.__getitem__, map(_R_STATE, rows)))))
    rs = len(blob) // len(rows)
    if rs * len(rows) != len(blob) or rs != len(heads[0]) + 2 * len(rows[0][2]) + 1:
        return None                                   # records of two sizes
    return blob, rs


@dataclass
class Interval:
    """Rates of one interval: per group key and for the table."""
    seconds: float
    inserts: Counter = field(default_factory=Counter)     # by source
    deletes: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)


OTHER = "other"        # sources forgotten after a long idle time (top, serve), summed: never an address


class LiveTable:
    """Entries of one namespace's table, with counts kept per dimension.

    Public: `by[group]` (Counter per "src", "dst", "dport", "state"),
    `inserts`/`deletes` (cumulative Counters of NEW/DESTROY events by
    source), `len()`, `legacy` (entries known from a dump only).
    Events: `insert` (NEW), `update` (UPDATE), `delete` (DESTROY).
    Dumps: `reset(rows)`, or a reconcile `begin()`, `seen(row)` per dumped
    row, `sweep()`: entries neither dumped nor touched by an event since
    begin() are gone from the kernel and are removed.

    Expiry schedule (with a `clock`): each dump's rows are counted by their
    remaining timeout into a forecast.Schedule (counts, nothing per entry);
    `sched` is the last complete dump's, plus the entries inserted since
    (events) that no row of it shows. An entry counts once per schedule:
    a dumped row, or an event for an entry the schedule does not hold yet
    (unknown to the table, or not yet reached by the running dump: its
    generation mark says so).
    """

    def __init__(self) -> None:
        self.entries = EntryStore()             # entry key -> code
        self._by = {g: Counter() for g in DIMS}  # `by`: read through settle()
        self._settle_n: int | None = None       # a deferred fill's rows (fill_end(defer=True))
        self.inserts: Counter = Counter()      # cumulative, by source
        self.deletes: Counter = Counter()
        self.legacy = 0
        self.legacy_min_timeout: int | None = None   # of the last dump
        self._gen = 0
        self._dead: set | None = None          # keys deleted during a reconcile
        self._addr: dict[bytes, str] = {}
        self._port: dict[tuple, str] = {}
        self.clock = None                      # set by the feed: expiry schedules are kept
        self.sched: Schedule | None = None     # the last complete dump's expiry schedule
        self._building: Schedule | None = None  # the running reconcile's
        self._raw = None                       # its raw row counts (seen() adds to them)
        self._pend: list = []                  # evented rows new to `sched`, not yet counted
        self._pend_b: list = []                # ... new to `_building`
        self.sysctls: dict = {}                # the namespace's timeouts, for the next schedule
        # DNATed entries (published ports, Services, NodePorts): the reply's
        # source, where the entry really goes, when it is not the original
        # destination. Only those entries have an item here; counted by
        # that address in `dnat` (the destination side).
        self.nat: dict[bytes, bytes] = {}
        self.dnat: Counter = Counter()

    key = staticmethod(entry_key)

    @property
    def by(self) -> dict[str, Counter]:
        """Entries per "src", "dst", "dport", "state" (exact: settled)."""
        self.settle()
        return self._by

    # --- dimensions -------------------------------------------------------
    def _a(self, raw: bytes) -> str:
        a = self._addr.get(raw)
        if a is None:
            if len(self._addr) > 200_000:      # a cache, not a history: stay bounded
                self._addr.clear()
            a = self._addr[raw] = _addr(raw)
        return a

    def _dport(self, proto: int, port) -> str:
        k = (proto, port)
        d = self._port.get(k)
        if d is None:
            if len(self._port) > 100_000:
                self._port.clear()
            d = self._port[k] = f"{proto_name(proto)}/{port}" \
                if proto in PORT_PROTOS and port is not None else proto_name(proto)
        return d

    def _dims_key(self, k: bytes, code: int) -> tuple[str, str, str, str]:
        proto, _, _, dport = _KEYU(k)
        half = (len(k) - 7) // 2
        return (self._a(k[7:7 + half]), self._a(k[7 + half:]), self._dport(proto, dport),
                _state(proto, code & STATE_MASK))

    def _count(self, k: bytes, code: int, d: int) -> None:
        by = self._by
        for c, v in zip((by["src"], by["dst"], by["dport"], by["state"]), self._dims_key(k, code)):
            n = c.get(v, 0) + d            # dict.get: no Counter.__missing__ call
            if n > 0:
                c[v] = n
            else:
                del c[v]
        if code & LEGACY:
            self.legacy += d

    def _set(self, k: bytes, code: int, old: int | None) -> None:
        """Entry k's code becomes `code`; `old` is its present one (the
        caller has looked it up: one dict lookup per event)."""
        if old == code:
            return
        if old is not None:
            if (old ^ code) & (STATE_MASK | LEGACY):
                self._count(k, old, -1)
                self._count(k, code, +1)
        else:
            self._count(k, code, +1)
        self.entries[k] = code

    def _code(self, row: tuple, legacy: bool = False) -> int:
        st = row[1]
        return (STATE_NONE if st is None else st & STATE_MASK) | (LEGACY if legacy else 0) | \
            (self._gen << GEN_SHIFT)

    def _nat_add(self, k: bytes, row: tuple) -> None:
        r = row[10] if len(row) > 10 else None
        if r is not None and r != row[3] and k not in self.nat:
            self.nat[k] = r
            self.dnat[self._a(r)] += 1

    def _nat_del(self, k: bytes) -> None:
        r = self.nat.pop(k, None)
        if r is not None:
            c = self.dnat
            a = self._a(r)
            if c[a] > 1:
                c[a] -= 1
            else:
                del c[a]

    def src_of(self, row: tuple) -> str:
        return self._a(row[2])

    # --- events -------------------------------------------------------------
    def insert(self, row: tuple) -> None:
        """A NEW event (or, for callers of old, any event that is not a delete)."""
        if self._settle_n is not None:
            self.settle()
        k = entry_key(row)
        if self._dead is not None:
            self._dead.discard(k)
        self.inserts[self._a(row[2])] += 1      # a kernel insert, even of a dumped entry
        old = self.entries.get(k)
        if self.clock is not None:
            self._scheduled(old, row)
        self._set(k, self._code(row), old)
        self._nat_add(k, row)

    def update(self, row: tuple) -> None:
        """An UPDATE event: a state change of an entry (never an insert). An
        unknown entry (events were lost) is added, uncounted as an insert."""
        if self._settle_n is not None:
            self.settle()
        k = entry_key(row)
        if self._dead is not None:
            self._dead.discard(k)
        old = self.entries.get(k)
        if self.clock is not None:
            self._scheduled(old, row)
        self._set(k, self._code(row), old)
        self._nat_add(k, row)

    def _scheduled(self, old: int | None, row: tuple) -> None:
        """An evented entry (its present code `old`) joins the schedules
        that do not hold it yet (in sched_flush(), once per batch of
        events: an append here)."""
        if old is None and self.sched is not None:
            self._pend.append(row)
        if self._building is not None and (old is None or (old & GEN_MASK) >> GEN_SHIFT != self._gen):
            self._pend_b.append(row)

    def sched_flush(self) -> None:
        """Count the evented entries of the last batch into the schedules,
        as inserted now (the feed calls it after each batch of events)."""
        if self._pend:
            if self.sched is not None:
                self.sched.inserted_rows(self._pend, self.clock())
            self._pend = []
        if self._pend_b:
            if self._building is not None:
                self._building.inserted_rows(self._pend_b, self.clock())
            self._pend_b = []

    def delete(self, row: tuple) -> None:
        if self._settle_n is not None:
            self.settle()
        k = entry_key(row)
        code = self.entries.pop(k, None)
        if self._dead is not None:
            self._dead.add(k)
        if code is not None:
            self._count(k, code, -1)
        self._nat_del(k)
        self.deletes[self._a(row[2])] += 1      # a kernel delete, known entry or not

    # --- dumps --------------------------------------------------------------
    def reset(self, rows) -> None:
        """Start over from a complete dump."""
        self._settle_n = None
        self.entries.clear()
        self.nat.clear()
        self.dnat.clear()
        for c in self._by.values():
            c.clear()
        self.legacy = 0
        self.begin()
        for row in rows:
            self.seen(row)
        self.sweep()

    def fill(self, batches) -> int:
        """Start over from a complete dump, given as batches of rows, counted
        column by column at C speed (the first dump of a big table: no
        Python call per entry but the key). Returns the rows taken."""
        self.fill_start()
        for rows in batches:
            self.fill_rows(rows)
        return self.fill_end()

    def fill_start(self) -> None:
        """fill() in steps, for a dump that pushes its rows (ctnetlink.dump(sink))."""
        self.sched = Schedule(self.clock(), self.sysctls) if self.clock is not None else None
        self._building = self._raw = None
        self._pend, self._pend_b = [], []
        self._settle_n = None
        self.entries.clear()
        self.nat.clear()
        self.dnat.clear()
        for c in self._by.values():
            c.clear()
        self._gen = (self._gen + 1) % GENS
        self._dead = None
        self.entries.hold = False
        base = LEGACY | (self._gen << GEN_SHIFT)
        self._fill = ({st: bytes(((STATE_NONE if st is None else st & STATE_MASK) | base,))
                       for st in (None, *range(256))}, Counter(), Counter(), Counter(), [0])

    def fill_rows(self, rows: list) -> None:
        codes, src, dst, pds, n = self._fill
        recs = load_records(rows, codes)
        if recs is not None:
            self.entries.load_blob(*recs)
        else:
            self.entries.load(map(entry_key, rows, map(codes.__getitem__, map(_R_STATE, rows))))
        try:                                    # DNATed rows: few on most hosts
            dnat = compress(rows, map(ne, map(_R_RSRC, rows), map(_R_DST, rows)))
            self.nat.update((entry_key(r), r[10]) for r in dnat if r[10] is not None)
        except IndexError:                      # rows without the reply's source
            self.nat.update((entry_key(r), r[10]) for r in rows
                            if len(r) > 10 and r[10] is not None and r[10] != r[3])
        src.update(map(_R_SRC, rows))
        dst.update(map(_R_DST, rows))
        pds.update(map(_R_PDS, rows))
        n[0] += len(rows)
        if self.sched is not None:
            self.sched.rows(rows, self.clock())

    def fill_end(self, defer: bool = False) -> int:
        """End fill_start/fill_rows; returns the rows taken. The counts come
        from the rows' columns; the store sorts the records (about 0.3 s per
        million entries). With `defer`, that sort waits for settle(): the
        first pump after the first dump, or the first read of `by`, len()
        or an event, whichever comes first, so a first frame or scrape
        needs no more than the dump itself."""
        _, src, dst, pds, n = self._fill
        self._fill = None
        if self.sched is not None:
            self.sched.end(self.clock())
        n = n[0]
        dn = self.dnat
        for raw in self.nat.values():
            dn[self._a(raw)] += 1
        by = self._by
        for raw, c in src.items():
            by["src"][self._a(raw)] += c
        for raw, c in dst.items():
            by["dst"][self._a(raw)] += c
        for (proto, port, st), c in pds.items():
            by["dport"][self._dport(proto, port)] += c
            by["state"][_state(proto, st)] += c
        self.legacy = n
        self._settle_n = n
        if not defer:
            self.settle()
        return n

    def settle(self) -> None:
        """Finish a deferred fill (fill_end): the store's records sorted; if
        the dump showed an entry twice (a dump under churn), the counts are
        taken again from the store, one per entry."""
        n = self._settle_n
        if n is None:
            return
        self._settle_n = None
        self.entries.seal()
        if n != len(self.entries):
            for c in self._by.values():
                c.clear()
            self.legacy = 0
            for k, code in self.entries.items():
                self._count(k, code, +1)

    def begin(self) -> None:
        """A reconcile starts: a dump of the table follows (`seen`), then `sweep`."""
        self.settle()
        self._gen = (self._gen + 1) % GENS
        self._dead = set()
        self.entries.hold = True                # one merge of the store, at the sweep
        self.legacy_min_timeout = None
        if self.clock is not None:
            self.sched_flush()
            self._building = Schedule(self.clock(), self.sysctls)
            self._raw = self._building.raw

    def seen(self, row: tuple, evented: bool = False) -> None:
        """One entry of the reconcile's dump. `evented`: an entry the table
        does not know yet carries the event extension (events are on and
        the listener is older than the entry: anything the first dump did
        not show), so it is not "legacy"."""
        k = entry_key(row)
        if k in self._dead:                     # deleted after the dump read it
            return
        old = self.entries.get(k)
        if old is not None and (old & GEN_MASK) >> GEN_SHIFT == self._gen:
            return                              # an event since begin() is newer news
        if self._raw is not None:
            self._raw[_SCHED_KEY(row)] += 1
        legacy = not evented if old is None else bool(old & LEGACY)
        self._set(k, self._code(row, legacy), old)
        self._nat_add(k, row)
        if legacy:
            t = row[9] if len(row) > 9 else None
            if t is not None and (self.legacy_min_timeout is None or t < self.legacy_min_timeout):
                self.legacy_min_timeout = t

    def sweep(self) -> int:
        """End of a reconcile: remove the entries the dump did not show
        (expired or deleted without an event). Returns how many."""
        stale = self.entries.take_stale(self._gen << GEN_SHIFT, GEN_MASK)
        for k, code in stale:
            self._count(k, code, -1)
            self._nat_del(k)
        self._dead = None
        self.entries.hold = False
        self.entries.compact()
        if self._building is not None:
            self.sched_flush()
            self.sched = self._building.end(self.clock())
            self._building = self._raw = None
        return len(stale)

    def sched_tick(self) -> None:
        """Between batches of a reconcile's rows: bucket what seen() counted
        (each batch is dated by the clock when it is read)."""
        b = self._building
        if b is not None and b.raw:
            b.mark(self.clock())

    def abort(self) -> None:
        """The reconcile's dump failed: keep what is known, sweep nothing.
        Every entry takes the running generation, so the next reconcile's
        sweep tells its unseen entries apart whatever failed before."""
        self.settle()
        gen = self._gen << GEN_SHIFT
        self.entries.recode(bytes(c if c == DELETED else (c & ~GEN_MASK) | gen for c in range(256)))
        self._dead = None
        self.entries.hold = False
        self._building = self._raw = None
        self._pend_b = []

    @property
    def reconciling(self) -> bool:
        return self._dead is not None

    def __len__(self) -> int:
        self.settle()
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
        self.table_full_hist: deque = deque(maxlen=history)
        self.src_drops: dict = {}             # drops per source since the first sample

    def update(self, s: Sample) -> dict:
        p, self.prev = self.prev, s
        if self.first is None:
            self.first = s
        f = self.first
        self.totals = {k: max(s.kernel.get(k, 0) - f.kernel.get(k, 0), 0)
                       for k in ("drop", "table_full", "early_drop", "insert_failed")}
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
                 for k in ("drop", "table_full", "early_drop", "insert_failed", "invalid")}
        table["inserts"] = (sum(s.inserts.values()) - sum(p.inserts.values())) / dt
        table["deletes"] = (sum(s.deletes.values()) - sum(p.deletes.values())) / dt
        self.table_full_hist.append(table["table_full"])
        self.last = {"seconds": dt, "table": table, "inserts": per_s(s.inserts, p.inserts),
                     "deletes": per_s(s.deletes, p.deletes), "drops": per_s(s.drops, p.drops),
                     "src_drops": self.src_drops}
        return self.last


def top_rows(live: LiveTable, rates: dict, group: str, sort: str, n: int,
             name_of, group_of=None) -> list[dict]:
    """The biggest groups: key, entries, share, rates, container name.

    Groups of sources (container, pod: `group_of(src)`, by default name_of)
    also count, as `entries_as_destination`, the DNATed entries whose
    reply comes from one of their addresses (published ports, Services,
    NodePorts): `entries` and the rates are the source side."""
    total = len(live) or 1
    members: dict = {}
    dest: Counter = Counter()
    if group in ("container", "pod"):
        group_of = group_of or name_of
        counts: Counter = Counter()
        for src, c in live.by["src"].items():
            name = group_of(src) or src
            counts[name] += c
            members.setdefault(name, []).append(src)
        for addr, c in live.dnat.items():
            name = group_of(addr)
            if name is not None:
                dest[name] += c
                if name not in counts:
                    counts[name] = 0
                    members[name] = []
    else:
        counts = live.by[group]
    rows = []
    for key, entries in counts.items():
        if group in ("src", "container", "pod"):
            srcs = [key] if group == "src" else members[key]
            ins = sum(rates.get("inserts", {}).get(s, 0.0) for s in srcs)
            dels = sum(rates.get("deletes", {}).get(s, 0.0) for s in srcs)
            drops = sum(rates.get("drops", {}).get(s, 0.0) for s in srcs)
        else:
            ins = dels = drops = None
        row = {"key": key, "entries": entries, "share": entries / total,
               "inserts_per_s": ins, "deletes_per_s": dels, "drops_per_s": drops,
               "container": name_of(key) if group == "src" else None,
               "drops_total": rates.get("src_drops", {}).get(key, 0) if group == "src" else None}
        if group in ("container", "pod"):
            row["entries_as_destination"] = dest.get(key, 0)
        rows.append(row)
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
    rows.sort(key=lambda r: (-(r[keyf] or 0) - r.get("entries_as_destination", 0) * (keyf == "entries"),
                             -r["entries"], str(r["key"])))
    return rows[:n]
