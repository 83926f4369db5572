"""Read exported conntrack tables: /proc/net/nf_conntrack, `conntrack -L`
and `conntrack -L -o extended` (any `-o` extras), plain or gzip, files or stdin.

The format is detected per line. Two parsers agree on every line:
- a fast path: one regular expression run over 8 MiB blocks with findall
  (no Python code per line), for the exact shapes the kernel and
  conntrack-tools print;
- a tolerant path: a token parser for everything else (other field orders,
  tabs, unknown extra fields). A block goes line by line only when the fast
  path did not account for every line in it.
Big plain files are split across CPUs.

Lines that neither parser accepts are counted as malformed, with their line
numbers. Blank lines and conntrack's trailer ("N flow entries have been
shown.") are ignored.
"""

from __future__ import annotations

import gzip
import itertools
import os
import zlib
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import BinaryIO

from tracer.core.conntrack import FLAG_BITS, canonical_addr
from tracer.core.filters import Filter
from tracer.core.snapshot import Columns
from tracer.formats import export_xml
from tracer.formats.files import open_input

BLOCK = 8 << 20
PARALLEL_MIN = 48 << 20     # split plain files larger than this across CPUs
MAX_SAMPLES = 5


class InputError(Exception):
    """Bad input: the message says what is wrong and what to do."""


# --- the fast path -----------------------------------------------------------
# Groups: proto number, state, src, dst, dport, unreplied block, tail block.
# `[^ ]+` (a single negated literal) is much faster in sre than a character
# class; a match can therefore run across a newline on a malformed line, but
# every match starts at a newline and consumes at least one line, so "one
# match per line" (checked per block) proves no match ran across lines.
_V = rb"[^ ]+"
_N = rb"[0-9]{1,10}"
_L4_ORIG = (rb"(?: sport=" + _V + rb" dport=(" + _N + rb")| type=" + _V + rb" code=" + _V +
            rb" id=" + _V + rb"| srckey=" + _V + rb" dstkey=" + _V + rb")?")
_L4_REPLY = (rb"(?: sport=" + _V + rb" dport=" + _V + rb"| type=" + _V + rb" code=" + _V +
             rb" id=" + _V + rb"| srckey=" + _V + rb" dstkey=" + _V + rb")?")
_ACCT = rb"(?: packets=" + _N + rb" bytes=" + _N + rb")?"
def _fast(timed: bool) -> "re.Pattern[bytes]":
    """The fast-path expression; `timed` also captures the timeout column
    (then a row is (proto, timeout, state, src, dst, dport, extra1, extra2))."""
    timeout = rb"(?:(" + _N + rb") )?" if timed else rb"(?:" + _N + rb" )?"
    return re.compile(
        rb"\n(?:ipv[46] +" + _N + rb" +)?[a-z][a-z0-9-]* +(" + _N + rb") +" + timeout +
        rb"(?:([A-Z][A-Z0-9_]*) )?src=(" + _V + rb") dst=(" + _V + rb")" + _L4_ORIG +
        rb"((?: zone-orig=" + _N + rb")?" + _ACCT + rb"(?: \[UNREPLIED\])?)"
        rb" src=" + _V + rb" dst=" + _V + _L4_REPLY + rb"(?: zone-reply=" + _N + rb")?" + _ACCT +
        rb"((?: \[[A-Z_]+\])*(?: mark=" + _N + rb")?(?: secctx=" + _V + rb")?(?: zone=" + _N + rb")?)"
        # then only key=value fields other than mark/zone, or [bracketed] ones
        # (use=, id=, delta-time=, labels=, [start=...]): a bare word, a second
        # entry on the line, or a stray mark= sends the line to the tolerant path.
        rb"(?: use=[0-9]+)?(?: (?!mark=|zone=)[a-z][a-z-]*=[^ \n]*| \[[^\]\n]*\])*(?=\n|\Z)")


FAST = _fast(False)
FAST_T = _fast(True)       # doctor --file: the timeout column too (one capture group more)

_NL_RUNS = re.compile(rb"\n+")
_IGNORED = re.compile(rb"^\s*(?:$|conntrack v[0-9.]+ \(conntrack-tools\):.*$|nfct_[a-z_]+: .*$)")


# --- the tolerant path ---------------------------------------------------------
_STATE = re.compile(rb"[A-Z][A-Z0-9_]*")
_NUM = re.compile(rb"[0-9]{1,10}")
_TUPLE_KEYS = frozenset((b"src", b"dst", b"sport", b"dport", b"type", b"code", b"id",
                         b"srckey", b"dstkey"))


def parse_line(line: bytes) -> tuple | None:
    """One entry in any known layout -> raw row (same form as the fast path), or None."""
    row = parse_timed(line)
    return None if row is None else (row[0],) + row[2:]


def parse_timed(line: bytes) -> tuple | None:
    """As parse_line, with the timeout (b"" when absent) as the second column,
    the form FAST_T's rows have."""
    toks = line.split()
    if len(toks) < 4:
        return None
    i = 0
    if toks[0] in (b"ipv4", b"ipv6"):
        if not toks[1].isdigit():
            return None
        i = 2
    name, num = toks[i], toks[i + 1]
    if not (name[:1].isalpha() and name.islower() and num.isdigit()):
        return None
    i += 2
    timeout = b""
    if i < len(toks) and toks[i].isdigit():      # timeout (absent when offloaded)
        if len(toks[i]) > 10:                    # no kernel prints a longer one (forecast.MAX_TIMEOUT)
            return None
        timeout = toks[i]
        i += 1
    state = b""
    if i < len(toks) and _STATE.fullmatch(toks[i]):
        state = toks[i]
        i += 1
    src = dst = dport = None
    nsrc = 0
    extra: list[bytes] = []
    in_bracket = False
    for t in toks[i:]:
        if in_bracket:                           # "[start=Tue Nov 25 ...]" spans tokens
            in_bracket = not t.endswith(b"]")
            continue
        if t.startswith(b"["):
            if t.endswith(b"]"):
                if b"=" not in t:
                    extra.append(t)
            else:
                in_bracket = True
            continue
        key, eq, val = t.partition(b"=")
        if not eq:
            return None                          # a bare word: not conntrack output
        if key == b"src":
            nsrc += 1
        if nsrc == 1 and key in _TUPLE_KEYS:
            if key == b"src":
                src = val
            elif key == b"dst":
                dst = val
            elif key == b"dport":
                dport = val
        elif key in (b"mark", b"zone", b"zone-orig"):
            if not _NUM.fullmatch(val):
                return None
            extra.append(t)
    if src is None or dst is None or nsrc != 2:   # both tuples, as every export prints
        return None
    if dport is not None and not _NUM.fullmatch(dport):
        return None
    if not _NUM.fullmatch(num):
        return None
    return (num, timeout, state, src, dst, dport or b"", b"", b" " + b" ".join(extra) if extra else b"")


# --- decoding of raw text values ----------------------------------------------------
class TextDecoder:
    """Decoder (see snapshot.Decoder) for rows read from text; caches per value."""

    def __init__(self) -> None:
        self._addr: dict[bytes, tuple[str, str] | None] = {}
        self._extra: dict[tuple, tuple[int, int | None, int]] = {}

    def proto(self, raw: bytes) -> int | None:
        n = int(raw)
        return n if n <= 255 else None

    def state(self, proto: int, raw: bytes) -> str:
        return raw.decode("latin-1") if raw else ""

    def addr(self, raw: bytes):
        try:
            return self._addr[raw]
        except KeyError:
            v = self._addr[raw] = canonical_addr(raw.decode("latin-1"))
            return v

    def dport(self, raw: bytes) -> int | None:
        if not raw:
            return None
        n = int(raw)
        return n if n <= 65535 else None

    def extra(self, raw: tuple) -> tuple[int, int | None, int]:
        try:
            return self._extra[raw]
        except KeyError:
            pass
        flags, mark, zone = 0, None, 0
        for t in (raw[0] + raw[1]).split():
            if t.startswith(b"["):
                flags |= FLAG_BITS.get(t[1:-1].decode("latin-1"), 0)
            elif t.startswith(b"mark="):
                mark = int(t[5:])          # digits only: both parsers check
            elif t.startswith(b"zone=") or t.startswith(b"zone-orig="):
                zone = int(t.partition(b"=")[2])
        v = self._extra[raw] = (flags, mark, zone)
        return v

    def valid(self, row: tuple) -> bool:
        """Whether every value of a row means something (addresses, port range)."""
        if self.addr(row[2]) is None or self.addr(row[3]) is None:
            return False
        if self.proto(row[0]) is None:
            return False
        return not row[4] or self.dport(row[4]) is not None


# --- scanning -----------------------------------------------------------------------
@dataclass
class ScanResult:
    cols: Columns = field(default_factory=Columns)
    lines: int = 0
    entries: int = 0            # valid entries read (before filters)
    ignored: int = 0
    trailers: int = 0           # conntrack's "N flow entries have been shown." lines
    malformed: int = 0
    samples: list = field(default_factory=list)   # (line number, text)
    ages: "RawAges | None" = None                 # timed scans: the timeout column's counts
    format: str = "text"        # "xml": conntrack -o xml, one line per <flow>

    def merge(self, other: "ScanResult", line_offset: int) -> None:
        self.cols.merge(other.cols)
        if other.ages is not None:
            if self.ages is None:
                self.ages = RawAges()
            self.ages.merge(other.ages)
        self.entries += other.entries
        self.ignored += other.ignored
        self.trailers += other.trailers
        self.malformed += other.malformed
        for n, text in other.samples:
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append((n + line_offset, text))
        self.lines += other.lines


# Columns of a timed row (FAST_T, parse_timed): the timeout is the second.
_T_COMBO = itemgetter(0, 2, 5, 6, 7)
_T_SRC = itemgetter(3)
_T_DST = itemgetter(4)
_T_AGE = itemgetter(0, 2, 6, 7, 1)          # proto, state, extra1, extra2, timeout
_T_APP = itemgetter(0, 2, 6, 7, 1, 3, 5)    # ... and source, destination port


def _add_timed(cols: Columns, rows: list) -> None:
    """Columns.add_rows for timed rows."""
    cols.combo.update(map(_T_COMBO, rows))
    cols.src.update(map(_T_SRC, rows))
    cols.dst.update(map(_T_DST, rows))
    cols.total += len(rows)


@dataclass
class RawAges:
    """Raw counts of the timeout column: (proto, state, extra1, extra2,
    timeout) and, up to forecast.APPS_CAP distinct keys, the same with the
    source and destination port (for "whose entries would a shorter
    timeout cut"). Decoded by `ages_summary`."""
    raw: Counter = field(default_factory=Counter)
    apps: Counter = field(default_factory=Counter)
    apps_complete: bool = True

    def add_rows(self, rows: list) -> None:
        self.raw.update(map(_T_AGE, rows))
        if self.apps_complete:
            self.apps.update(map(_T_APP, rows))
            self._cap()

    def merge(self, other: "RawAges") -> None:
        self.raw.update(other.raw)
        if self.apps_complete and other.apps_complete:
            self.apps.update(other.apps)
            self._cap()
        else:
            self.apps_complete = False
            self.apps.clear()

    def _cap(self) -> None:
        from tracer.core.forecast import APPS_CAP
        if len(self.apps) > APPS_CAP:
            self.apps_complete = False
            self.apps.clear()


class Scanner:
    """Folds blocks of complete lines into a ScanResult. `timed` also counts
    the timeout column (rows of FAST_T; no filter then)."""

    def __init__(self, flt: Filter, timed: bool = False):
        if timed and flt.active:
            raise ValueError("a timed scan takes no filter")
        self.flt = flt
        self.timed = timed
        self.dec = TextDecoder()
        self.cache: dict = {}
        self.res = ScanResult(ages=RawAges() if timed else None)
        self._seen: dict[bytes, bool] = {}
        self._add = _add_timed if timed else Columns.add_rows

    def block(self, data: bytes) -> None:
        """`data`: whole lines, each ending in a newline."""
        nlines = data.count(b"\n")
        rows = (FAST_T if self.timed else FAST).findall(b"\n" + data)
        cols = Columns()
        # blank lines are ignored lines: counted at C speed, not one by one
        # (a block of 8 M empty lines took 7 s line by line)
        blank = nlines + 1 - len(_NL_RUNS.findall(b"\n" + data)) if len(rows) != nlines else 0
        whole = len(rows) + blank == nlines
        if whole:
            self._add(cols, rows)
        if whole and self._values_ok(cols):
            self.res.ignored += blank
        else:
            rows = self._line_by_line(data)
            cols = Columns()
            self._add(cols, rows)
        if self.timed:
            self.res.ages.add_rows(rows)
        self.res.entries += len(rows)
        self.res.lines += nlines
        if self.flt.active:
            cols = Columns()
            cols.add_rows(self.flt.apply(rows, self.dec, self.cache))
        self.res.cols.merge(cols)

    def _values_ok(self, cols: Columns) -> bool:
        """Every distinct address and port of a block means something.

        Checked once per distinct value; a block with a bad value goes line
        by line so the bad line is found and numbered.
        """
        seen = self._seen
        for v in (*cols.src, *cols.dst):
            ok = seen.get(v)
            if ok is None:
                ok = seen[v] = self.dec.addr(v) is not None
            if not ok:
                return False
        dec = self.dec
        return all(dec.proto(p) is not None and (not d or dec.dport(d) is not None)
                   for p, _, d, _, _ in cols.combo)

    def _line_by_line(self, data: bytes) -> list:
        rows = []
        res = self.res
        base = res.lines
        timed = self.timed
        rx, parse = (FAST_T, parse_timed) if timed else (FAST, parse_line)
        for idx, line in enumerate(data.split(b"\n")[:-1]):
            m = rx.fullmatch(b"\n" + line)
            row = (m.groups(b"") if timed else m.groups()) if m else parse(line)
            if row is not None and self.dec.valid((row[0],) + row[2:] if timed else row):
                rows.append(row)
            elif _IGNORED.match(line):
                res.ignored += 1
                res.trailers += line.startswith(b"conntrack v")
            else:
                res.malformed += 1
                if len(res.samples) < MAX_SAMPLES:
                    res.samples.append((base + idx + 1, line[:160].decode("latin-1")))
        return rows


def _check_text(head: bytes, name: str) -> None:
    if not head:
        raise InputError(f"{name} is empty: nothing to analyse (export the table with "
                         "'conntrack -L -o extended > FILE' or 'cat /proc/net/nf_conntrack > FILE')")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"{name} is UTF-16 text (a redirect on Windows?), not the bytes conntrack "
                         f"wrote: convert it first, e.g. iconv -f UTF-16 -t UTF-8 < FILE > FILE.txt")
    sample = head[:65536]
    if b"\x00" in sample or sum(b < 9 or 13 < b < 32 or b == 127 for b in sample[:4096]) > 40:
        raise InputError(f"{name} is a binary file, not a conntrack table export "
                         "(expected /proc/net/nf_conntrack or conntrack -L output, plain or gzip)")


def _open(path: str) -> tuple[BinaryIO, str, bool]:
    """(stream, display name, seekable plain file?)"""
    if path == "-":
        if sys.stdin is None:
            raise InputError("standard input is closed: pipe a table export into --file -")
        raw: BinaryIO = sys.stdin.buffer
        name = "standard input"
    elif not path:
        raise InputError("--file needs a path (or '-' for standard input)")
    else:
        name = path
        raw = open_input(path, InputError, "a table export file", "try as a user who can read it")
    peek = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if peek == b"\x1f\x8b":
        counted = _Counted(raw)
        gz = gzip.GzipFile(fileobj=counted)
        gz.myfileobj = raw if path != "-" else None   # close() closes the file too
        gz.compressed = counted                       # what _blocks checks the expansion against
        return gz, name, False
    seekable = path != "-" and os.path.isfile(path)
    return raw, name, seekable


# A gzip export may expand at most RATIO times what has been read of it, once
# past FLOOR: conntrack's text compresses about 8 times (varied tables) to 250
# times (one line repeated), so only a table of near-identical lines over
# 256 MiB is refused; a 4 MiB file that unpacks to 1 GiB stops after 256 MiB.
RATIO = 100
FLOOR = 256 << 20


class _Counted:
    """A binary stream that counts the bytes read from it."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def read(self, size=-1):
        b = self.f.read(size)
        self.n += len(b)
        return b


def _reads(stream: BinaryIO, name: str, end: int | None = None):
    """Raw blocks of a stream (up to byte `end` if given), a gzip one's
    expansion bounded; read errors become InputError."""
    pos = 0
    counted = getattr(stream, "compressed", None)
    while True:
        if counted is not None and pos > FLOOR and pos > RATIO * counted.n:
            raise InputError(f"{name}: {counted.n:,} compressed bytes unpack to more than {pos:,} "
                             f"(over {RATIO} times): not a table export (a compression bomb?); "
                             "not reading further")
        want = BLOCK if end is None else min(BLOCK, end - pos)
        try:
            buf = stream.read(want) if want > 0 else b""
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise InputError(f"{name}: unreadable or truncated compressed data ({e}); "
                             "re-export the table") from None
        if not buf:
            return
        pos += len(buf)
        yield buf


def _lines(reads):
    """Raw blocks -> whole-line blocks (each ending in a newline)."""
    rest = b""
    for buf in reads:
        buf = rest + buf
        cut = buf.rfind(b"\n") + 1
        if cut == 0:                             # no line break in a whole block
            if len(buf) < BLOCK:
                rest = buf
                continue
            buf, cut = buf + b"\n", len(buf) + 1
        rest = buf[cut:]
        yield buf[:cut]
    if rest:
        yield rest + b"\n"


def _blocks(stream: BinaryIO, name: str, end: int | None = None):
    """Whole-line blocks from a stream (up to byte `end` if given)."""
    return _lines(_reads(stream, name, end))


def _scan_range(path: str, start: int, end: int, flt: Filter, timed: bool = False) -> ScanResult:
    sc = Scanner(flt, timed)
    with open(path, "rb") as f:
        f.seek(start)
        for blk in _blocks(f, path, end - start):
            sc.block(blk)
    return sc.res


def _split_points(path: str, parts: int) -> list[int]:
    size = os.path.getsize(path)
    points = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(size * k // parts)
            f.readline()
            points.append(max(f.tell(), points[-1]))
    points.append(size)
    return points


def default_jobs() -> int:
    """Processes for a big file: the CPUs that are free now (up to 8). On a
    machine whose CPUs are busy (load average), splitting only adds the
    pool's cost: measured with one of two CPUs taken, 2 processes took
    4.3 s where one took 2.4 s."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        free = cpus - os.getloadavg()[0]
    except OSError:
        free = cpus
    return max(1, min(8, cpus, int(free + 0.5)))


def scan(path: str, flt: Filter, jobs: int | None = None,
         timed: bool = False) -> tuple[ScanResult, TextDecoder]:
    """Read a table export (path or '-') into a ScanResult. Raises InputError.
    `timed`: count the timeout column too (ScanResult.ages; no filter)."""
    stream, name, seekable = _open(path)
    try:
        jobs = jobs or default_jobs()
        if seekable and jobs > 1 and os.path.getsize(path) >= PARALLEL_MIN:
            head = stream.read(65536)
            _check_text(head, name)
            if not export_xml.is_xml(head.removeprefix(b"\xef\xbb\xbf")):
                stream.close()
                return _scan_parallel(path, flt, jobs, timed), TextDecoder()
            stream.seek(0)
        sc = Scanner(flt, timed)
        reads = _reads(stream, name)
        first = next(reads, b"").removeprefix(b"\xef\xbb\xbf")   # a UTF-8 byte order mark
        _check_text(first[:65536], name)
        reads = itertools.chain((first,), reads)
        if export_xml.is_xml(first):
            sc.res.format = "xml"
            blocks = export_xml.to_lines(reads, name)
        else:
            blocks = _lines(reads)
        try:
            for blk in blocks:
                sc.block(blk)
        except export_xml.XmlError as e:
            raise InputError(str(e)) from None
        return sc.res, sc.dec
    finally:
        if path != "-":
            stream.close()


def _scan_parallel(path: str, flt: Filter, jobs: int, timed: bool = False) -> ScanResult:
    import multiprocessing as mp
    points = _split_points(path, jobs)
    ctx = mp.get_context("fork")
    with ctx.Pool(jobs) as pool:
        parts = pool.starmap(_scan_range, [(path, points[k], points[k + 1], flt, timed)
                                           for k in range(jobs)])
    total = ScanResult(ages=RawAges() if timed else None)
    for part in parts:
        total.merge(part, total.lines)
    return total


# --- the timeout column -------------------------------------------------------------
def ages_summary(ages: RawAges, dec: TextDecoder, sysctls: dict) -> dict:
    """forecast.summarize() of an export's timeout column: the same evidence
    a live dump gives (schedule, idle buckets, shorter-timeout candidates
    by source and destination port), from the text's raw counts."""
    from tracer.core import forecast
    from tracer.core.conntrack import F_ASSURED, STATE_NAMES, proto_name

    kinds: dict = {}

    def kind_of(p_raw, s_raw, x1, x2):
        k = (p_raw, s_raw, x1, x2)
        v = kinds.get(k)
        if v is None:
            p = dec.proto(p_raw)
            flags = dec.extra((x1, x2))[0]
            names = STATE_NAMES.get(p, ())
            st = s_raw.decode("latin-1") if s_raw else ""
            idx = names.index(st) if st in names else None
            v = kinds[k] = (forecast.kind(p, idx, flags), bool(flags & F_ASSURED), p)
        return v

    remaining: dict = {}
    assured = 0
    for (p, s, x1, x2, t), n in ages.raw.items():
        k, a, _ = kind_of(p, s, x1, x2)
        assured += n if a else 0
        if t and int(t) <= forecast.MAX_TIMEOUT:   # longer: not a kernel's (left out)
            d = remaining.setdefault(k, {})
            d[int(t)] = d.get(int(t), 0) + n
    apps = None
    if ages.apps_complete:
        apps = []
        for (p, s, x1, x2, t, src, dport), n in ages.apps.items():
            if t and int(t) <= forecast.MAX_TIMEOUT:
                k, _, proto = kind_of(p, s, x1, x2)
                port = dec.dport(dport)
                apps.append((k, int(t), dec.addr(src)[1],
                             f"{proto_name(proto)}/{port}" if port is not None else proto_name(proto), n))
    return forecast.summarize(remaining, sysctls, assured=assured, apps=apps)
