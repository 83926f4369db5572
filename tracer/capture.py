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
Files are created with mode 0600: they hold addresses. The reader accepts
a truncated last record (a capture cut short) and says so.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass, field, fields

from tracer.doctor import HostState

FORMAT = "cttrace-capture"
VERSION = 1


class CaptureError(Exception):
    """A capture that cannot be read; the message says why and what to do."""


class Writer:
    def __init__(self, path: str, header: dict):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as e:
            raise CaptureError(f"{path}: cannot create: {e.strerror}") from None
        self._raw = os.fdopen(fd, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        self.records = 0
        self.write({"format": FORMAT, "version": VERSION, **header})

    def write(self, rec: dict) -> None:
        self._gz.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        self.records += 1

    def flush(self) -> None:
        self._gz.flush(zlib.Z_SYNC_FLUSH)     # a cut-short capture stays readable up to here

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


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
            h.rates = {k: v / dt for k, v in counter_deltas(stats).items()}
            h.stats = b["kernel"]
            h.count, h.max = b.get("count"), b.get("max")
        return h


def counter_deltas(stats: list) -> dict:
    """Increase of each kernel counter over consecutive stats records; a
    counter that went down was reset (the namespace was re-created): count
    its new value from zero."""
    out: dict = {}
    for p, s in zip(stats, stats[1:]):
        for k, v in s["kernel"].items():
            old = p["kernel"].get(k, 0)
            out[k] = out.get(k, 0) + (v - old if v >= old else v)
    return out


def read_capture(path: str) -> Capture:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path} is a directory; give a capture file") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied (captures are mode 0600: read it as "
                           "their owner or root)") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror}") from None
    if not raw.startswith(b"\x1f\x8b"):
        raise CaptureError(f"{path} is not a cttrace capture (not compressed); for table "
                           "exports use: cttrace snapshot --file")
    data, truncated = _gunzip(raw)
    lines = data.split(b"\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        if truncated and not data:
            raise CaptureError(f"{path}: the capture is truncated before its header: nothing to read")
        raise CaptureError(f"{path} is not a cttrace capture (no capture header)")
    v = header.get("version")
    if not isinstance(v, int) or v > VERSION:
        raise CaptureError(f"{path} was written by a newer cttrace (capture format {v}; this one "
                           f"reads up to {VERSION}): upgrade cttrace to analyse it")
    header["state"] = _clean_state(header.get("state"))
    cap = Capture(header=header, truncated=truncated)
    body = lines[1:]
    for i, line in enumerate(body):
        if not line:
            continue
        try:
            rec = _valid(json.loads(line))
        except (ValueError, RecursionError):
            if i == len(body) - 1:          # a cut-short last record
                cap.truncated = True
            else:
                cap.bad_records += 1
            continue
        cap.records.append(rec)
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
        if f.name in ("count", "max", "buckets", "total", "window") and _num(v):
            out[f.name] = v
        elif f.name in ("sysctls", "stats", "rates", "by_state", "by_proto_dport", "by_src") and _counts(v):
            out[f.name] = v
        elif f.name == "containers" and isinstance(v, dict) and all(
                isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
            out[f.name] = v
        elif f.name in ("rules", "netns") and isinstance(v, str):
            out[f.name] = v
    return out


def _gunzip(raw: bytes) -> tuple[bytes, bool]:
    """Decompress as far as the data goes: (bytes, cut short?)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = []
    truncated = False
    try:
        pos = 0
        while pos < len(raw):
            out.append(d.decompress(raw[pos:pos + 65536]))
            pos += 65536
            if d.eof:
                break
        if not d.eof:
            out.append(d.flush())
            truncated = True
    except zlib.error:
        truncated = True
    return b"".join(out), truncated


def row_record(kind: str, row: tuple, t: float, name_of=None) -> dict:
    """An insert/delete record from a ctnetlink row."""
    from tracer.ctnetlink import NetlinkDecoder
    from tracer.conntrack import proto_name
    dec = _DEC.setdefault(0, NetlinkDecoder())
    src = dec.addr(row[2])[1]
    return {"k": kind, "t": round(t, 6), "proto": proto_name(row[0]), "src": src,
            "sport": row[7] if len(row) > 7 else None, "dst": dec.addr(row[3])[1], "dport": row[4],
            "container": name_of(src) if name_of else None}


_DEC: dict = {}
