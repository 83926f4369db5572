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
symbolic link and never over an existing file unless asked (overwrite=True);
they are written to a temporary file beside the name and take the name
only when complete (synced): a full disk or a crash leaves the old file. The reader accepts a truncated last
record (a capture cut short) and says so; it reads files from other hosts,
so it bounds what it decompresses (limit_for: 100 times the compressed size,
at least 64 MiB, at most 2 GiB), the length of one record (32 MiB for the
header and end records, which carry the host's state; 64 KiB for events),
the objects in one record before parsing it, the records it keeps (4
million) and the corrupted records it skips. Each record is read with the
schema of its kind (KINDS; the state with HostState's annotations): fields
of the wrong type are refused, unknown fields are left out.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Annotated, NotRequired, TypedDict

from tracer.core import counters, schema
from tracer.core.hoststate import HostState
from tracer.core.schema import Max, Range
from tracer.formats.files import kind_of, open_input, temp_next_to, unlink_quietly

FORMAT = "cttrace-capture"
VERSION = 1
REVISION = 2           # additions readable by every version-1 reader (entries records)
ENTRY_KEYS = 12        # an entries record names this many containers/sources, the rest is "other"
ENTRIES_MAX_COUNT = 200_000   # no entries records above this many entries (a dump takes ~1 s per 200k)


class CaptureError(Exception):
    """A capture that cannot be read; the message says why and what to do."""


class Writer:
    """A new capture file, mode 0600, written to a temporary file in the
    same directory (O_CREAT|O_EXCL|O_NOFOLLOW) that takes the name only
    when complete: close() finishes the gzip stream, syncs it and renames
    it over `path` (overwrite=True) or links it there (never over a file
    made meanwhile). It never follows a symbolic link (a link at `path` is
    replaced, never written through) and never replaces an existing file
    unless overwrite=True. On any failure (a full disk, a crash) whatever
    was at `path` stays as it was; discard() removes the temporary file."""

    def __init__(self, path: str, header: dict, overwrite: bool = False):
        refuse_existing(path, overwrite)
        self.path, self.overwrite = path, overwrite
        self.tmp, fd = temp_next_to(path, 0o600, CaptureError)
        self._raw = os.fdopen(fd, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        self.records = 0
        try:
            os.fchmod(fd, 0o600)
            self.write({"format": FORMAT, "version": VERSION, "revision": REVISION, **header})
        except OSError as e:
            self.discard()
            raise CaptureError(f"{path}: cannot write: {e.strerror}; nothing was changed") from None

    def write(self, rec: dict) -> None:
        self._gz.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        self.records += 1

    def flush(self) -> None:
        self._gz.flush(zlib.Z_SYNC_FLUSH)     # a cut-short capture stays readable up to here

    def close(self) -> None:
        """Complete the file (gzip trailer, fsync) and give it its name.
        A failure discards it (CaptureError): the old file is untouched."""
        try:
            self._gz.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            _publish(self.tmp, self.path, self.overwrite)
        except OSError as e:
            self.discard()
            raise CaptureError(f"{self.path}: cannot write: {e.strerror}; nothing was changed") from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Give up: the temporary file is removed, `path` is left as it was."""
        for f in (self._gz, self._raw):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        unlink_quietly(self.tmp)


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    """A complete temporary file takes its name: renamed over `path` when
    replacing, linked there when not (never over a file made meanwhile)."""
    if overwrite:
        os.rename(tmp, path)
        return
    exists = CaptureError(f"{path} already exists: not overwriting it; choose another "
                          "name or use --force to replace it")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError:
        # a file system without hard links (vfat, some FUSE): a rename, once
        # nothing is there (a file made in between these two calls is replaced)
        if os.path.lexists(path):
            raise exists from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def write_new(path: str, text: str, overwrite: bool = False, mode: int = 0o600) -> None:
    """Write a whole text file (an HTML report: the capture's addresses,
    names and rules, so mode 0600 like the capture) with the same refusals
    as a capture: no symbolic link followed, no file replaced unless asked.
    The text goes to a temporary file in the same directory, made with
    O_CREAT|O_EXCL|O_NOFOLLOW and synced; only a complete file takes the
    name (rename when replacing, link when not: never over a file made
    meanwhile), so a full disk leaves the old file as it was."""
    refuse_existing(path, overwrite)
    data = text.encode("utf-8")
    tmp, fd = temp_next_to(path, mode, CaptureError)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, path, overwrite)
    except OSError as e:
        unlink_quietly(tmp)
        raise CaptureError(f"{path}: cannot write: {e.strerror}; nothing was changed") from None
    except BaseException:
        unlink_quietly(tmp)
        raise


def refuse_existing(path: str, overwrite: bool) -> str | None:
    """What is at `path` (None: nothing), after refusing a directory, or
    an existing file unless overwrite."""
    what = kind_of(path)
    if what == "directory":
        raise CaptureError(f"{path} is a directory; give a file name")
    if what and not overwrite:
        raise CaptureError(f"{path} already exists ({what}): not overwriting it; choose another "
                           "name or use --force to replace it")
    return what


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
        h = HostState(**state_fields(raw))
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
FLOOR = 64 << 20
HARD_CAP = 2 << 30
MAX_LINE = 32 << 20
MAX_BAD = 10_000
MAX_RECORDS = 4_000_000   # about 2 GiB of parsed records (~500 bytes each)      # corrupted records, when they outnumber the good ones
CHUNK = 1 << 20


def limit_for(compressed: int) -> int:
    """The most a capture of `compressed` bytes may decompress to."""
    return min(HARD_CAP, max(FLOOR, RATIO * compressed))


def read_capture(path: str, max_bytes: int | None = None, max_line: int = MAX_LINE) -> Capture:
    """Read a capture, tolerating a cut-short end; max_bytes (default
    limit_for(the file's size)) bounds the decompressed size."""
    f = open_input(path, CaptureError, "a capture file",
                   "captures are mode 0600: read it as their owner or root")
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if not f.read(2) == b"\x1f\x8b":
                raise CaptureError(f"{path} is not a cttrace capture (not compressed); for table "
                                   "exports use: cttrace snapshot --file")
            f.seek(0)
            return _parse(path, _Lines(f, path, max_bytes or limit_for(size), max_line))
        except MemoryError:
            raise CaptureError(f"{path}: not enough memory to read this capture (it decompresses to "
                               f"more than this process may hold); read it on a bigger machine") from None
        except RecursionError:
            raise CaptureError(f"{path}: a record nested too deeply: not a capture cttrace wrote") from None
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
        header = _load(first, state=True)
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
    header = _header(header)
    cap = Capture(header=header)
    last_end = None
    for line, last in it:
        if not line:
            continue
        try:
            rec = _valid(_load(line, state=line.startswith(_END)))
        except (ValueError, RecursionError):
            if last:                        # a cut-short last record
                cap.truncated = True
            else:
                cap.bad_records += 1
                if cap.bad_records > MAX_BAD and cap.bad_records > len(cap.records):
                    raise CaptureError(f"{path}: more than {MAX_BAD:,} corrupted records and fewer good "
                                       "ones: not a capture cttrace wrote; not reading further")
            continue
        if rec is None:                     # a kind this version does not know
            continue
        if rec["k"] == "end":               # only the last end record's state is read
            if last_end is not None:
                last_end.pop("state", None)
            last_end = rec
        cap.records.append(rec)
        if len(cap.records) > MAX_RECORDS:
            raise CaptureError(f"{path}: more than {MAX_RECORDS:,} records: more than cttrace reads in "
                               "one go (a capture of a few minutes holds far fewer); record a shorter "
                               "capture")
    cap.truncated = cap.truncated or lines.truncated
    # wall-clock time can step back while recording: analyse in time order
    cap.records.sort(key=lambda r: r["t"])
    if not cap.of("end"):
        cap.truncated = True
    return cap


class Header(TypedDict, total=False):
    format: Annotated[str, Max(32)]
    version: int
    revision: int
    created: Time
    host: Label
    kernel: Label
    backend: Label
    netns: Label
    netns_inode: int | None
    interval: Annotated[float, Range(0, 86400)]


def _header(raw: dict) -> dict:
    """The header's typed fields (a field of the wrong type is left out)."""
    return schema.fields_of(Header, raw) | {"state": state_fields(raw.get("state"))}


# --- the records' schema (tracer/core/schema.py reads these annotations) ----------------
Addr = Annotated[str, Max(64)]
Label = Annotated[str, Max(256)]
Time = Annotated[float, Range(0, 1e11)]
PortNum = Annotated[int, Range(0, 65535)]


class Record(TypedDict):
    k: Annotated[str, Max(16)]
    t: Time


class Stats(Record):
    kernel: dict[Label, int]
    count: NotRequired[int | None]
    max: NotRequired[int | None]


class Flow(Record):
    """insert, delete (ctnetlink rows)."""
    src: Addr
    proto: NotRequired[Label | None]
    sport: NotRequired[PortNum | None]
    dst: NotRequired[Addr | None]
    dport: NotRequired[PortNum | None]
    container: NotRequired[Label | None]


class Drop(Flow):
    """A Drop (cttrace drops --json fields the analysis reads)."""
    reason: NotRequired[Label | None]
    dst_container: NotRequired[Label | None]
    netns: NotRequired[int | None]


class Lost(Record):
    what: NotRequired[Label | None]
    n: NotRequired[int]


class Entries(Record):
    """The table's entries by container or source (entries_record)."""
    by: Annotated[dict[Label, int], Max(4096)]
    total: NotRequired[int]


class End(Record):
    names: NotRequired[dict[Addr, Label]]       # sources named at the end (started late)
    totals: NotRequired[dict[Label, int]]
    sources: NotRequired[dict[Addr, int] | None]
    lost: NotRequired[int | dict[Label, int] | None]
    # and "state": read with HostState's own schema (state_fields)


KINDS = {"stats": Stats, "insert": Flow, "delete": Flow, "drop": Drop, "lost": Lost, "entries": Entries,
         "end": End}

# Bounds before a record is parsed: json.loads makes ~64 bytes per {} or []
# and ~50 per string, so a line's length and its count of brackets bound
# what parsing it can take. Event records (insert, delete, drop, stats,
# lost) are a few hundred bytes with one or two objects; the header and the
# end record carry the host's state (rules, per-source counts, the timeout
# histogram: a few thousand objects at most).
MAX_EVENT_LINE = 64 << 10
MAX_EVENT_NODES = 64
MAX_STATE_NODES = 200_000
_END = b'{"k":"end"'


def _nodes(line: bytes) -> int:
    return line.count(b"{") + line.count(b"[")


def _load(line: bytes, state: bool):
    """json.loads within the bounds above, else ValueError."""
    if not state and len(line) > MAX_EVENT_LINE:
        raise ValueError("record too long")
    if _nodes(line) > (MAX_STATE_NODES if state else MAX_EVENT_NODES):
        raise ValueError("too many objects")
    return json.loads(line)


def _valid(rec) -> dict | None:
    """The record's typed fields (KINDS), None for a kind this reader does
    not know, ValueError when a field has the wrong type."""
    if not isinstance(rec, dict) or not isinstance(rec.get("k"), str):
        raise ValueError("bad record")
    kind = KINDS.get(rec["k"])
    if kind is None:
        return None
    try:
        out = schema.check(rec, kind)
    except schema.Invalid as e:
        raise ValueError(str(e)) from None
    if kind is End:
        out["state"] = state_fields(rec.get("state"))
    return out


def state_fields(raw) -> dict:
    """The fields of a recorded HostState that have their annotated types
    (HostState's annotations are the schema; nothing is listed here)."""
    return schema.fields_of(HostState, raw)


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
