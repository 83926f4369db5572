"""The live table's identity store: a key -> one-byte code map for up to
millions of conntrack entries, at about 18 bytes per IPv4 entry (a dict
of bytes keys costs about 90: a key object and a slot each).

    store = EntryStore()
    store[key] = code            # key: bytes (15 for IPv4, 39 for IPv6), code: 0-255
    store.get(key), store.pop(key, None), len(store), key in store
    store.load(records); store.seal()        # bulk: records = key + code byte
    store.load_blob(joined, rs)              # ... or records already joined
    store.take_stale(gen, mask)  # remove and return the entries whose code & mask != gen

How. Per key length, a *run*: records (key + code) sorted by key, back to
back in one bytearray, with a sparse index (every STEP-th key, a list of
bytes) that `bisect` searches; a lookup bisects the index and then
`bytes.find`s the key in one block of STEP records: both in C, about a
microsecond. A code is changed in place. A deleted record keeps its key
(the run stays sorted) and gets the code DELETED until the next merge:
codes are 0-254. Keys the run does not hold live in a plain dict
(`_fresh`) until they are merged into the run: when the dict outgrows a
share of the run (amortised O(1) per new key), or on `compact()` (the live
table calls it after each reconcile).

Sorted blobs are merged a block at a time (`merge`), so a merge or a bulk
load of a million records never holds them all as Python objects: the
transient memory is a few blocks plus the output, and the small objects of
a step are freed before the next one (no heap left fragmented by a million
short-lived objects).
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from itertools import compress, islice
from operator import itemgetter

DELETED = 0xFF             # the code of a deleted record (codes are 0-254)

STEP = 32                  # records per index block: a find over 512 bytes (IPv4)
MIN_FRESH = 65536          # the dict may hold this many keys before a merge ...
FRESH_SHARE = 8            # ... or 1/8 of the run, whichever is more
BLOCK = 4096               # records taken from each input per step of a merge
LOAD_CHUNK = 65536         # records of a bulk load sorted at a time


class _Records:
    """A sorted blob of rs-byte records, seen as a sequence (for bisect)."""

    __slots__ = ("blob", "rs")

    def __init__(self, blob, rs: int):
        self.blob, self.rs = blob, rs

    def __len__(self) -> int:
        return len(self.blob) // self.rs

    def __getitem__(self, i: int) -> bytes:
        return bytes(self.blob[i * self.rs:(i + 1) * self.rs])


def _splitter(rs: int):
    return re.compile(b"(?s).{%d}" % rs).findall


_CODE = itemgetter(-1)


def merge(blobs: list, rs: int, dedup: bool = False) -> tuple[bytearray, int]:
    """Merge sorted blobs of rs-byte records into one sorted bytearray,
    BLOCK records of each at a time, leaving out DELETED records and, with
    `dedup`, all but one record of a key (the key: all bytes but the last).
    Returns (the blob, how many duplicates were left out)."""
    split = _splitter(rs)
    seqs = [_Records(b, rs) for b in blobs if len(b) >= rs]
    pos = [0] * len(seqs)
    ends = [len(s) for s in seqs]
    out = bytearray(sum(ends) * rs)
    o = twice = 0
    klen = rs - 1
    key = itemgetter(slice(0, klen))
    last = None
    while True:
        live = [i for i in range(len(seqs)) if pos[i] < ends[i]]
        if not live:
            break
        # every input gives the records up to the smallest of their blocks' last records
        pivot = min(seqs[i][min(pos[i] + BLOCK, ends[i]) - 1] for i in live)
        recs: list = []
        for i in live:
            stop = bisect_right(seqs[i], pivot, pos[i], min(pos[i] + BLOCK, ends[i]))
            recs += split(seqs[i].blob, pos[i] * rs, stop * rs)
            pos[i] = stop
        if DELETED in map(_CODE, recs):
            recs = list(compress(recs, map(DELETED.__ne__, map(_CODE, recs))))
        if len(live) > 1:
            recs.sort()                          # sorted runs: merged in linear time
        if dedup and recs and ((last is not None and recs[0].startswith(last)) or
                               any(map(bytes.startswith, islice(recs, 1, None), map(key, recs)))):
            kept = [] if last is not None and recs[0].startswith(last) else [recs[0]]
            kept += [b for a, b in zip(recs, islice(recs, 1, None)) if not b.startswith(a[:klen])]
            twice += len(recs) - len(kept)
            recs = kept
        if recs:
            n = len(recs) * rs
            out[o:o + n] = b"".join(recs)
            o += n
            last = recs[-1][:klen]
    del out[o:]
    return out, twice


class _Run:
    """Sorted fixed-size records of one key length (see the module docstring)."""

    __slots__ = ("klen", "rs", "blob", "idx", "dead")

    def __init__(self, klen: int):
        self.klen = klen
        self.rs = klen + 1
        self.blob = bytearray()
        self.idx: list[bytes] = []
        self.dead = 0                      # DELETED records

    def __len__(self) -> int:
        return len(self.blob) // self.rs - self.dead

    def build(self, blob: bytearray) -> None:
        klen, span = self.klen, STEP * self.rs
        self.blob = blob
        self.idx = [bytes(blob[o:o + klen]) for o in range(0, len(blob), span)]
        self.dead = 0

    def find(self, k: bytes) -> int:
        """Offset of k's record (DELETED or not), or -1."""
        i = bisect_right(self.idx, k) - 1
        if i < 0:
            return -1
        rs = self.rs
        lo = i * STEP * rs
        hi = lo + STEP * rs
        blob = self.blob
        p = blob.find(k, lo, hi)
        while p >= 0 and (p - lo) % rs:        # a match across two records
            p = blob.find(k, p + 1, hi)
        return p


class _Load:
    """A bulk load of one record size: sorted chunks of LOAD_CHUNK records."""

    __slots__ = ("rs", "buf", "chunks")

    def __init__(self, rs: int):
        self.rs = rs
        self.buf = bytearray()
        self.chunks: list[bytearray] = []

    def add(self, joined: bytes) -> None:
        self.buf += joined
        if len(self.buf) >= LOAD_CHUNK * self.rs:
            self.cut()

    def cut(self) -> None:
        if self.buf:
            recs = _splitter(self.rs)(self.buf)
            recs.sort()
            self.chunks.append(bytearray().join(recs))
            self.buf = bytearray()


class EntryStore:
    """A compact map of entry keys to one-byte codes (see the module docstring)."""

    def __init__(self) -> None:
        self._runs: dict[int, _Run] = {}
        self._fresh: dict[bytes, int] = {}
        self._hit: tuple | None = None       # (key, run, offset) of the last run lookup
        self._loads: dict[int, _Load] = {}   # a bulk load, until seal()
        self.hold = False                    # a reconcile runs: deleted records wait for its end

    # --- lookups --------------------------------------------------------------
    def _find(self, k: bytes) -> tuple[_Run | None, int]:
        run = self._runs.get(len(k))
        if run is None or not run.blob:
            return None, -1
        p = run.find(k)
        if p >= 0:
            if run.blob[p + run.klen] == DELETED:
                return run, -1
            self._hit = (k, run, p)
        return run, p

    def get(self, k: bytes, default=None):
        c = self._fresh.get(k)
        if c is not None:
            return c
        run, p = self._find(k)
        return default if p < 0 else run.blob[p + run.klen]

    def __getitem__(self, k: bytes) -> int:
        c = self.get(k)
        if c is None:
            raise KeyError(k)
        return c

    def __contains__(self, k: bytes) -> bool:
        return self.get(k) is not None

    def __setitem__(self, k: bytes, code: int) -> None:
        h = self._hit
        if h is not None and h[0] is k:            # looked up just before: one search per event
            h[1].blob[h[2] + h[1].klen] = code
            return
        fresh = self._fresh
        if k in fresh:
            fresh[k] = code
            return
        run, p = self._find(k)
        if p >= 0:
            run.blob[p + run.klen] = code
            return
        fresh[k] = code
        if len(fresh) > MIN_FRESH and len(fresh) > self._run_len() // FRESH_SHARE:
            self.compact()                  # amortised: a merge per run/8 new keys

    def pop(self, k: bytes, default=None):
        c = self._fresh.pop(k, None)
        if c is not None:
            return c
        h = self._hit
        if h is not None and h[0] is k:
            run, p = h[1], h[2]
        else:
            run, p = self._find(k)
            if p < 0:
                return default
        self._hit = None
        c = run.blob[p + run.klen]
        run.blob[p + run.klen] = DELETED
        run.dead += 1
        if not self.hold and run.dead > MIN_FRESH and run.dead > len(run):
            self.compact()
        return c

    def _run_len(self) -> int:
        return sum(len(r) for r in self._runs.values())

    def __len__(self) -> int:
        return self._run_len() + len(self._fresh)

    # --- iteration (rare: recounts, tests) --------------------------------------
    def items(self):
        for run in self._runs.values():
            klen, rs, blob = run.klen, run.rs, run.blob
            split = _splitter(rs)
            for start in range(0, len(blob), BLOCK * rs):
                for r in split(blob, start, start + BLOCK * rs):
                    if r[klen] != DELETED:
                        yield r[:klen], r[klen]
        yield from self._fresh.items()

    def __iter__(self):
        return map(itemgetter(0), self.items())

    def keys(self):
        return iter(self)

    def values(self):
        return map(itemgetter(1), self.items())

    def __sizeof__(self) -> int:
        n = object.__sizeof__(self) + sys.getsizeof(self._runs) + sys.getsizeof(self._fresh)
        n += sum(map(sys.getsizeof, self._fresh))
        for run in self._runs.values():
            n += sys.getsizeof(run.blob) + sys.getsizeof(run.idx) + sum(map(sys.getsizeof, run.idx))
        return n

    # --- bulk ---------------------------------------------------------------------
    def clear(self) -> None:
        self._runs.clear()
        self._fresh.clear()
        self._hit = None
        self._loads.clear()

    def load(self, records) -> None:
        """Records (key + code byte) of a bulk load into an empty store, in
        batches; seal() ends it. The batch's objects are joined at once."""
        recs = records if isinstance(records, list) else list(records)
        if not recs:
            return
        rs = len(recs[0])
        joined = b"".join(recs)
        if len(joined) == rs * len(recs):             # one length (no IPv4 and IPv6 mixed)
            self._load(rs).add(joined)
            return
        lengths = list(map(len, recs))
        for rs in set(lengths):
            self._load(rs).add(b"".join(compress(recs, map(rs.__eq__, lengths))))

    def load_blob(self, blob: bytes, rs: int) -> None:
        """Records of one size, already joined, into a bulk load (see load)."""
        if len(blob) % rs:
            raise ValueError(f"a blob of {len(blob)} bytes holds no whole {rs}-byte records")
        if blob:
            self._load(rs).add(blob)

    def _load(self, rs: int) -> _Load:
        ld = self._loads.get(rs)
        if ld is None:
            ld = self._loads[rs] = _Load(rs)
        return ld

    def seal(self) -> int:
        """End a bulk load: merge its sorted chunks into the runs. Returns
        how many keys it held twice (a dump under churn can show an entry
        twice; one of its codes is kept)."""
        twice = 0
        for rs, ld in sorted(self._loads.items()):
            ld.cut()
            chunks, ld.chunks = ld.chunks, []
            blob, n = merge(chunks, rs, dedup=True)
            del chunks
            twice += n
            self._run(rs - 1).build(blob)
        self._loads.clear()
        self._hit = None
        return twice

    def take_stale(self, gen: int, mask: int) -> list[tuple[bytes, int]]:
        """Remove the entries whose code & mask != gen; return them (key, code)."""
        out = []
        stale = bytes(int(c & mask != gen and c != DELETED) for c in range(256))
        for run in self._runs.values():
            klen, rs, blob = run.klen, run.rs, run.blob
            codes = blob[klen::rs]
            flags = codes.translate(stale)
            i = flags.find(1)
            while i >= 0:
                o = i * rs
                out.append((bytes(blob[o:o + klen]), codes[i]))
                blob[o + klen] = DELETED
                run.dead += 1
                i = flags.find(1, i + 1)
        fresh = self._fresh
        gone = [(k, c) for k, c in fresh.items() if c & mask != gen]
        for k, _ in gone:
            del fresh[k]
        self._hit = None
        return out + gone

    def compact(self) -> None:
        """Merge the fresh keys into the runs and drop the tombstones."""
        self._hit = None
        if not self._fresh and not any(r.dead for r in self._runs.values()):
            return
        by_len: dict[int, list[bytes]] = {}
        for k, c in self._fresh.items():
            by_len.setdefault(len(k), []).append(k + bytes((c,)))
        for klen in set(by_len) | {k for k, r in self._runs.items() if r.dead}:
            run = self._run(klen)
            new = by_len.get(klen, [])
            new.sort()
            blob, _ = merge([run.blob, bytearray().join(new)], run.rs)
            run.build(blob)
        self._fresh = {}

    def recode(self, table: bytes) -> None:
        """Translate every code through a 256-byte table (DELETED must map
        to itself)."""
        for run in self._runs.values():
            klen, rs = run.klen, run.rs
            run.blob[klen::rs] = run.blob[klen::rs].translate(table)
        fresh = self._fresh
        for k, c in fresh.items():
            fresh[k] = table[c]

    def _run(self, klen: int) -> _Run:
        run = self._runs.get(klen)
        if run is None:
            run = self._runs[klen] = _Run(klen)
        return run
