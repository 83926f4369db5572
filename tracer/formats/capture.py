"""Capture files: short diagnostic recordings analysed anywhere.

Format (version 1): gzip-compressed JSON lines. The first line is the
header: {"format": "cttrace-capture", "version": 1, host, kernel, backend,
netns, interval, "state": the doctor's HostState at the start}. Then
records, each with "k" (kind) and "t" (seconds since the epoch):
  stats   count, max, kernel (the namespace's per-CPU counters, summed)
  insert  proto, src, sport, dst, dport, container      (ctnetlink events)
  delete  the same
  drop    a Drop (cttrace drops --json fields)
  lost    what, n                                       (netlink overrun, ...)
  end     totals, sources (exact per-source drops), state (HostState at the end)
Revision 2 (header "revision": 2; still version 1: readers of version 1
ignore record kinds they do not know, and files without it read as before):
  entries by ({container name or source address: entries}, the ENTRY_KEYS
          biggest and "other"), total: the table's entries by source, from a
          dump every few intervals (none when the table is too big to dump
          often: ENTRIES_MAX_COUNT)
Files are created with mode 0600 (they hold addresses), never through a
symbolic link and never over an existing file unless asked (overwrite=True:
a new file renamed over the old name). The reader accepts a truncated last
record (a capture cut short) and says so; it reads files from other hosts,
so it bounds what it decompresses (limit_for: 100 times the compressed size,
at least 256 MiB, at most 2 GiB), the length of one record (64 MiB) and the
corrupted records it skips.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import secrets
import stat
import zlib
from dataclasses import dataclass, field, fields

from tracer.core import counters
from tracer.core.hoststate import HostState

FORMAT = "cttrace-capture"
VERSION = 1
REVISION = 2           # additions readable by every version-1 reader (entries records)
ENTRY_KEYS = 12        # an entries record names this many containers/sources, the rest is "other"
ENTRIES_MAX_COUNT = 200_000   # no entries records above this many entries (a dump takes ~1 s per 200k)


class CaptureError(Exception):
    """A capture that cannot be read; the message says why and what to do."""


class Writer:
    """A new capture file, mode 0600. It never follows a symbolic link and
    never replaces an existing file unless overwrite=True; then the new file
    is made under a temporary name in the same directory and renamed over
    the old name (a link there is replaced, never written through)."""

    def __init__(self, path: str, header: dict, overwrite: bool = False):
        fd = create_private(path, overwrite)
        self._raw = os.fdopen(fd, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        self.records = 0
        self.write({"format": FORMAT, "version": VERSION, "revision": REVISION, **header})

    def write(self, rec: dict) -> None:
        self._gz.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        self.records += 1

    def flush(self) -> None:
        self._gz.flush(zlib.Z_SYNC_FLUSH)     # a cut-short capture stays readable up to here

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_private(path: str, overwrite: bool = False, mode: int = 0o600) -> int:
    """A file descriptor on a new file at `path` (mode 0600 by default),
    created with O_CREAT|O_EXCL|O_NOFOLLOW: never through a symbolic link,
    never over an existing file. With overwrite=True an existing file (or
    link) at `path` is replaced by rename, never written through; a
    directory is still refused. Errors are one-line CaptureErrors."""
    what = _existing(path)
    if what == "directory":
        raise CaptureError(f"{path} is a directory; give a file name")
    if what and not overwrite:
        raise CaptureError(f"{path} already exists ({what}): not overwriting it; choose another "
                           "name or use --force to replace it")
    try:
        if not what:
            try:
                fd = os.open(path, _NEW, mode)
            except FileExistsError:          # made meanwhile: same refusal
                raise CaptureError(f"{path} already exists: not overwriting it; choose another "
                                   "name or use --force to replace it") from None
        else:
            fd = _replace(path, mode)
        os.fchmod(fd, mode)
    except OSError as e:
        raise CaptureError(f"{path}: cannot create: {e.strerror}") from None
    return fd


def _existing(path: str) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None                          # os.open will say what is wrong
    if stat.S_ISLNK(st.st_mode):
        return f"a symbolic link to {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    return "a file" if stat.S_ISREG(st.st_mode) else "not a regular file"


def _replace(path: str, mode: int) -> int:
    """A new file under a random name next to `path`, renamed over it."""
    d, base = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(d, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, _NEW, mode)
            break
        except FileExistsError:
            continue
    else:
        raise CaptureError(f"{path}: cannot make a temporary file next to it")
    try:
        os.rename(tmp, path)
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd


def write_new(path: str, text: str, overwrite: bool = False, mode: int = 0o644) -> None:
    """Write a whole text file (an HTML report) with the same refusals as
    a capture: no symbolic link followed, no file replaced unless asked."""
    with os.fdopen(create_private(path, overwrite, mode), "w", encoding="utf-8") as f:
        f.write(text)


@dataclass
class Capture:
    header: dict
    records: list = field(default_factory=list)
    truncated: bool = False
    bad_records: int = 0

    def of(self, kind: str) -> list:
        return [r for r in self.records if r.get("k") == kind]

    def host_state(self) -> HostState:
        """The state at the end (or at the start, if the capture was cut short),
        with the kernel's counter rates over the capture."""
        end = self.of("end")
        raw = (end[-1].get("state") if end else None) or self.header.get("state") or {}
        known = {f.name for f in fields(HostState)}
        h = HostState(**{k: v for k, v in raw.items() if k in known})
        stats = self.of("stats")
        if len(stats) >= 2:
            a, b = stats[0], stats[-1]
            dt = max(b["t"] - a["t"], 1e-6)
            h.window = dt
            h.deltas = counter_deltas(stats)
            h.rates = {k: v / dt for k, v in h.deltas.items()}
            h.stats = b["kernel"]
            h.count, h.max = b.get("count"), b.get("max")
        fails: dict = {}
        for d in self.of("drop"):                   # clashes the probes saw, by the sender's destination
            if d.get("reason") == "insert_failed" and isinstance(d.get("dst"), str) \
                    and isinstance(d.get("dport"), int) and isinstance(d.get("proto"), str):
                key = f"{d['proto']} {d['dst']}:{d['dport']}"
                fails[key] = fails.get(key, 0) + 1
        if fails:
            h.insert_failed_by_dst = fails
        return h


def counter_deltas(stats: list) -> dict:
    """Increase of each kernel counter over the stats records (wraps and
    resets as tracer/core/counters.py says)."""
    return counters.series_deltas([s["kernel"] for s in stats])


# Bounds on what `report` decompresses (captures come from other hosts): a
# capture's JSON lines compress about 5 to 15 times, so a file is allowed
# RATIO times its compressed size, at least FLOOR and never more than
# HARD_CAP (parsed records take several times their text in memory); one
# record (the header and end records carry the host's rules) at most
# MAX_LINE. Beyond: a one-line CaptureError, nothing more is decompressed.
RATIO = 100
FLOOR = 256 << 20
HARD_CAP = 2 << 30
MAX_LINE = 64 << 20
MAX_BAD = 10_000      # corrupted records, when they outnumber the good ones
CHUNK = 1 << 20


def limit_for(compressed: int) -> int:
    """The most a capture of `compressed` bytes may decompress to."""
    return min(HARD_CAP, max(FLOOR, RATIO * compressed))


def read_capture(path: str, max_bytes: int | None = None, max_line: int = MAX_LINE) -> Capture:
    """Read a capture, tolerating a cut-short end; max_bytes (default
    limit_for(the file's size)) bounds the decompressed size."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path} is a directory; give a capture file") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied (captures are mode 0600: read it as "
                           "their owner or root)") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if not f.read(2) == b"\x1f\x8b":
                raise CaptureError(f"{path} is not a cttrace capture (not compressed); for table "
                                   "exports use: cttrace snapshot --file")
            f.seek(0)
            return _parse(path, _Lines(f, path, max_bytes or limit_for(size), max_line))
        except IsADirectoryError:
            raise CaptureError(f"{path} is a directory; give a capture file") from None
        except OSError as e:
            raise CaptureError(f"{path}: cannot read: {e.strerror}") from None


class _Lines:
    """The lines of a gzip stream, decompressed as far as the data goes,
    CHUNK bytes of output at a time, within the bounds; iterate for
    (line, last) where last is the text after the final newline."""

    def __init__(self, f, path: str, max_bytes: int, max_line: int):
        self.f, self.path, self.max_bytes, self.max_line = f, path, max_bytes, max_line
        self.truncated = False
        self.total = 0

    def _chunks(self):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while not d.eof:
                data = d.unconsumed_tail or self.f.read(CHUNK)
                if not data:
                    self.truncated = True        # the stream ends before its end
                    return
                out = d.decompress(data, CHUNK)
                self.total += len(out)
                if self.total > self.max_bytes:
                    raise CaptureError(
                        f"{self.path} decompresses to more than {_size(self.max_bytes)} (its compressed "
                        f"size is {_size(os.fstat(self.f.fileno()).st_size)}): not a capture cttrace "
                        "wrote (a compression bomb?); not reading further")
                yield out
        except zlib.error:
            self.truncated = True

    def __iter__(self):
        buf = b""
        for out in self._chunks():
            buf += out
            if b"\n\n" in buf:                # empty lines say nothing: skip them at C speed
                buf = _BLANKS.sub(b"\n", buf)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line:
                    yield line, False
            if len(buf) > self.max_line:
                raise CaptureError(f"{self.path}: a record longer than {_size(self.max_line)}: "
                                   "not a capture cttrace wrote; not reading further")
        yield buf, True


_BLANKS = re.compile(b"\n\n+")


def _size(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.4g} {unit}"
    return f"{n} bytes"


def _parse(path: str, lines: _Lines) -> Capture:
    it = iter(lines)
    first, _ = next(it)
    try:
        header = json.loads(first)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        if lines.truncated and not first and lines.total == 0:
            raise CaptureError(f"{path}: the capture is truncated before its header: nothing to read")
        raise CaptureError(f"{path} is not a cttrace capture (no capture header)")
    v = header.get("version")
    if not isinstance(v, int) or v > VERSION:
        raise CaptureError(f"{path} was written by a newer cttrace (capture format {v}; this one "
                           f"reads up to {VERSION}): upgrade cttrace to analyse it")
    header["state"] = _clean_state(header.get("state"))
    cap = Capture(header=header)
    for line, last in it:
        if not line:
            continue
        try:
            rec = _valid(json.loads(line))
        except (ValueError, RecursionError):
            if last:                        # a cut-short last record
                cap.truncated = True
            else:
                cap.bad_records += 1
                if cap.bad_records > MAX_BAD and cap.bad_records > len(cap.records):
                    raise CaptureError(f"{path}: more than {MAX_BAD:,} corrupted records and fewer good "
                                       "ones: not a capture cttrace wrote; not reading further")
            continue
        cap.records.append(rec)
    cap.truncated = cap.truncated or lines.truncated
    # wall-clock time can step back while recording: analyse in time order
    cap.records.sort(key=lambda r: r["t"])
    if not cap.of("end"):
        cap.truncated = True
    return cap


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _counts(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and _num(v) for k, v in d.items())


_TUPLE = {"src": str}


def _valid(rec) -> dict:
    """The record if its fields have the types the analysis relies on."""
    if not isinstance(rec, dict) or not isinstance(rec.get("k"), str) or not _num(rec.get("t")) \
            or not 0 <= rec["t"] < 1e11:
        raise ValueError("bad record")
    k = rec["k"]
    if k == "stats":
        if not _counts(rec.get("kernel")):
            raise ValueError("bad stats")
        for f in ("count", "max"):
            if rec.get(f) is not None and not _num(rec[f]):
                raise ValueError("bad stats")
    elif k in ("insert", "delete", "drop"):
        if not isinstance(rec.get("src"), str) or not (rec.get("container") is None or
                                                       isinstance(rec.get("container"), str)):
            raise ValueError("bad tuple")
    elif k == "entries":
        if not _counts(rec.get("by")) or not _num(rec.get("total", 0)):
            raise ValueError("bad entries")
    elif k == "lost":
        if not _num(rec.get("n", 1)):
            raise ValueError("bad lost")
    elif k == "end":
        if rec.get("sources") is not None and not _counts(rec["sources"]):
            raise ValueError("bad end")
        rec["state"] = _clean_state(rec.get("state"))
    return rec


def _clean_state(raw) -> dict:
    """Keep the fields of a recorded HostState that have the right types."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for f in fields(HostState):
        v = raw.get(f.name)
        if v is None:
            continue
        if f.name in ("count", "max", "buckets", "total", "window", "max_global", "max_own",
                      "entry_bytes") and _num(v):
            out[f.name] = v
        elif f.name in ("sysctls", "stats", "rates", "by_state", "by_proto_dport", "by_src",
                        "deltas", "insert_failed_by_dst") and _counts(v):
            out[f.name] = v
        elif f.name == "containers" and isinstance(v, dict) and all(
                isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
            out[f.name] = v
        elif f.name in ("rules", "netns", "kernel", "max_scope", "entry_bytes_how") and isinstance(v, str):
            out[f.name] = v
        elif f.name == "ages":
            from tracer.core.forecast import clean
            out[f.name] = clean(v)
        elif f.name == "nat":
            from tracer.core.nat import clean_state
            out[f.name] = clean_state(v)
    return out


def entries_record(t: float, counts: dict, total: int) -> dict:
    """An entries record from {container or source: entries}: the
    ENTRY_KEYS biggest, the rest summed as "other"."""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    by = dict(top[:ENTRY_KEYS])
    rest = sum(n for _, n in top[ENTRY_KEYS:])
    if rest:
        by["other"] = by.get("other", 0) + rest
    return {"k": "entries", "t": round(t, 6), "by": by, "total": total}


def row_record(kind: str, row: tuple, t: float, name_of=None) -> dict:
    """An insert/delete record from a ctnetlink row."""
    from tracer.kernel.ctnetlink import NetlinkDecoder
    from tracer.core.conntrack import proto_name
    dec = _DEC.setdefault(0, NetlinkDecoder())
    src = dec.addr(row[2])[1]
    return {"k": kind, "t": round(t, 6), "proto": proto_name(row[0]), "src": src,
            "sport": row[7] if len(row) > 7 else None, "dst": dec.addr(row[3])[1], "dport": row[4],
            "container": name_of(src) if name_of else None}


_DEC: dict = {}
