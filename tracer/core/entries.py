"""The live table's identity store: a key -> one-byte code map for up to
millions of conntrack entries, at about 17 bytes per IPv4 entry (a dict
of bytes keys costs about 90: a key object and a slot each).

    store = EntryStore()
    store[key] = code            # key: bytes (15 for IPv4, 39 for IPv6), code: 0-255
    store.get(key), store.pop(key, None), len(store), key in store
    store.load(records); store.seal()        # bulk: records = key + code byte
    store.take_stale(gen, mask)  # remove and return the entries whose code & mask != gen

How. Per key length, a *run*: records (key + code) sorted by key, back to
back in one bytearray, with a sparse index (every STEP-th key, a list of
bytes) that `bisect` searches; a lookup bisects the index and then
`bytes.find`s the key in one block of STEP records: both in C, about a
microsecond. A code is changed in place. A deleted record is zeroed (a
tombstone: no real key is all zeros, see ZERO below) until the next merge.
Keys the run does not hold live in a plain dict (`_fresh`) until they are
merged into the run: when the dict outgrows a share of the run (amortised
O(1) per new key) or on `compact()` (the live table calls it after each
reconcile). A merge streams the run block by block (the run stays one
allocation, its records are never all Python objects at once).

The first dump of a big table is loaded in bulk (`load` then `seal`): its
records are sorted once (C) and joined into the run.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from itertools import compress, islice
from operator import itemgetter

STEP = 32                  # records per index block: a find over 512 bytes (IPv4)
MIN_FRESH = 4096           # the dict may hold this many keys before a merge ...
FRESH_SHARE = 8            # ... or 1/8 of the run, whichever is more
CHUNK = 65536              # records per step of a merge


class _Run:
    """Sorted fixed-size records of one key length (see the module docstring)."""

    __slots__ = ("klen", "rs", "blob", "idx", "dead", "zero", "zkey", "split")

    def __init__(self, klen: int):
        self.klen = klen
        self.rs = klen + 1
        self.blob = bytearray()
        self.idx: list[bytes] = []
        self.dead = 0                      # tombstones
        self.zero = bytes(self.rs)         # a tombstone record
        self.zkey = bytes(klen)            # never in a run (it would match tombstones)
        self.split = re.compile(b"(?s).{%d}" % self.rs).findall

    def __len__(self) -> int:
        return len(self.blob) // self.rs - self.dead

    def build(self, blob: bytearray) -> None:
        rs, klen = self.rs, self.klen
        self.blob = blob
        span = STEP * rs
        self.idx = [bytes(blob[o:o + klen]) for o in range(0, len(blob), span)]
        self.dead = 0

    def find(self, k: bytes) -> int:
        """Offset of k's record, or -1."""
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

    def records(self, start: int, stop: int) -> list[bytes]:
        """The live records of record numbers [start, stop), as bytes."""
        rs = self.rs
        recs = self.split(self.blob, start * rs, stop * rs)
        return list(filter(self.zero.__ne__, recs)) if self.dead else recs

    def chunks(self):
        """Every live record, in lists of at most CHUNK."""
        total = len(self.blob) // self.rs
        for start in range(0, total, CHUNK):
            yield self.records(start, min(start + CHUNK, total))



class EntryStore:
    """A compact map of entry keys to one-byte codes (see the module docstring)."""

    def __init__(self) -> None:
        self._runs: dict[int, _Run] = {}
        self._fresh: dict[bytes, int] = {}
        self._hit: tuple | None = None       # (key, run, offset) of the last run lookup
        self._load: list[bytes] = []         # records of a bulk load, until seal()
        self.hold = False                    # defer merges (a reconcile is running)

    # --- lookups --------------------------------------------------------------
    def _find(self, k: bytes) -> tuple[_Run | None, int]:
        run = self._runs.get(len(k))
        if run is None or not run.blob or k == run.zkey:
            return None, -1
        p = run.find(k)
        if p >= 0:
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
        if h is not None and h[0] is k:            # looked up just before (one search per event)
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
        if len(fresh) > MIN_FRESH and \
                len(fresh) > self._run_len() // (1 if self.hold else FRESH_SHARE):
            self.compact()

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
        run.blob[p:p + run.rs] = run.zero
        run.dead += 1
        if not self.hold and run.dead > max(MIN_FRESH, len(run) // 2):
            self.compact()
        return c

    def _run_len(self) -> int:
        return sum(len(r) for r in self._runs.values())

    def __len__(self) -> int:
        return self._run_len() + len(self._fresh)

    # --- iteration (rare: recounts, tests) --------------------------------------
    def items(self):
        for run in self._runs.values():
            klen = run.klen
            for recs in run.chunks():
                for r in recs:
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
        self._load = []

    def load(self, records) -> None:
        """Records (key + code byte) of a bulk load into an empty store; seal() ends it."""
        self._load.extend(records)

    def seal(self) -> int:
        """End a bulk load: sort the records into runs. Returns how many keys
        it held twice (a dump under churn can show an entry twice; one of
        its codes is kept)."""
        recs, self._load = self._load, []
        lengths = set(map(len, recs))
        twice = 0
        for rs in sorted(lengths):
            part = recs if len(lengths) == 1 else list(compress(recs, map(rs.__eq__, map(len, recs))))
            part.sort()
            klen = rs - 1
            key = itemgetter(slice(0, klen))
            if any(map(bytes.startswith, islice(part, 1, None), map(key, part))):
                kept = [b for a, b in zip(part, islice(part, 1, None)) if not b.startswith(a[:klen])]
                twice += len(part) - 1 - len(kept)
                part = part[:1] + kept
            zero = bytes(klen)
            if part and part[0].startswith(zero):     # an all-zero key is never put in a run
                self._fresh[zero] = part.pop(0)[-1]
            self._run(klen).build(bytearray().join(part))
            del part
        del recs
        self._hit = None
        return twice

    def take_stale(self, gen: int, mask: int) -> list[tuple[bytes, int]]:
        """Remove the entries whose code & mask != gen; return them (key, code)."""
        out = []
        stale = bytes(int(c & mask != gen) for c in range(256))
        for run in self._runs.values():
            klen, rs, blob = run.klen, run.rs, run.blob
            codes = blob[klen::rs]
            flags = codes.translate(stale)
            i = flags.find(1)
            while i >= 0:
                o = i * rs
                if blob[o:o + rs] != run.zero:
                    out.append((bytes(blob[o:o + klen]), codes[i]))
                    blob[o:o + rs] = run.zero
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
        fresh = self._fresh
        by_len: dict[int, list[bytes]] = {}
        keep: dict[bytes, int] = {}
        for k, c in fresh.items():
            if k.count(0) == len(k):                # all zeros: stays in the dict
                keep[k] = c
            else:
                by_len.setdefault(len(k), []).append(k + bytes((c,)))
        for klen in set(by_len) | {k for k, r in self._runs.items() if r.dead}:
            run = self._run(klen)
            new = sorted(by_len.get(klen, ()))
            rs = run.rs
            out = bytearray((len(run) + len(new)) * rs)
            pos = j = 0
            for recs in run.chunks():
                if recs:
                    stop = bisect_right(new, recs[-1], j)
                    if j < stop:
                        recs += new[j:stop]
                        recs.sort()                  # two sorted runs: a linear merge
                        j = stop
                    out[pos:pos + len(recs) * rs] = b"".join(recs)
                    pos += len(recs) * rs
            if j < len(new):                         # keys above the run's last
                out[pos:] = b"".join(new[j:])
            run.build(out)
        self._fresh = keep

    def _run(self, klen: int) -> _Run:
        run = self._runs.get(klen)
        if run is None:
            run = self._runs[klen] = _Run(klen)
        return run
