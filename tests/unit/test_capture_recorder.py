"""`cttrace capture` through a real TracingSession (fake backend, fake
ctnetlink events and dump) and the recorder (tracer/live/recorder.py):
what it records, and that a failure mid-write (a full disk) never costs
the old capture with --force (issue 20)."""

import errno
import os
import socket
from contextlib import contextmanager

import pytest

from tests.clirunner import runner
from tracer.cli import main
from tracer.core.events import Counters, Drop, SourceCounts
from tracer.core.hoststate import HostState
from tracer.formats.capture import CaptureError, Writer, read_capture
from tracer.kernel import ctnetlink
from tracer.kernel.ctevents import DELETE, INSERT
from tracer.kernel.stats import TableState
from tracer.live.session import TracingSession

HDR = {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node", "interval": 1.0}


def _row(src, sport):
    return (17, None, socket.inet_aton(src), socket.inet_aton("198.18.1.1"), 53, 0, (0, 0), sport, None, 30)


NETNS = os.stat("/proc/self/ns/net").st_ino        # the followed table: ours


def _drop(src, sport, ts=1700000000.0):
    return Drop(ts=ts, netns=NETNS, cpu=0, family="ipv4", proto="udp", src=src, sport=sport,
                dst="198.18.1.1", dport=53, reason="table_full", ct_attached=False)


@pytest.fixture
def capture_cli(monkeypatch, fake_backend, fake_events):
    """run(*args) -> the CLI's result: `cttrace capture` on a real
    TracingSession (the options the command gives it) with a fake backend
    (two table-full drops, one from a source named only later), ctnetlink
    events (an insert and a delete of web-1's flow) and a fake dump."""
    from tests.unit.conftest import FakeNames
    ev = fake_events()
    ev.queue = [(INSERT, _row("10.0.0.1", 1000)), (DELETE, _row("10.0.0.1", 1000))]
    monkeypatch.setattr("tracer.live.session.CtEvents", lambda ref: ev)
    state = TableState(count=3, max=100, buckets=64, cpu=[{"cpu": 0, "drop": 2}])
    monkeypatch.setattr(TracingSession, "read_table", lambda self: state)
    monkeypatch.setattr("tracer.live.recorder.read_live", lambda ref, window, names: HostState(count=3))

    def dump(sink):
        rows = [_row("10.0.0.1", 1), _row("10.0.0.1", 2), _row("198.18.0.9", 3)]
        sink(rows)
        return ctnetlink.DumpResult(count=len(rows))
    monkeypatch.setattr("tracer.live.recorder.ctnetlink.dump", dump)
    counts = Counters(backend="fake", sources=[SourceCounts(NETNS, "198.18.0.9", table_full=2)])
    be = fake_backend([[_drop("198.18.0.9", 5), _drop("198.18.0.9", 6)]], counters=counts)

    @contextmanager
    def session(what, opts):
        with TracingSession(what, opts, backend=be, names=FakeNames(late={"198.18.0.9": "batch-7"})) as s:
            yield s
    monkeypatch.setattr("tracer.cli.capture.session", session)
    return lambda *args: runner().invoke(main, ["capture", *args])


def test_capture_records_what_the_session_hands_over(capture_cli, tmp_path):
    out, ready = tmp_path / "c.ctcap", tmp_path / "ready"
    r = capture_cli("-o", str(out), "--duration", "1s", "--interval", "0.2", "--ready-file", str(ready))
    assert r.exit_code == 0, r.output
    assert ready.read_text() == f"{os.getpid()}\n"
    assert "records written to" in r.output and "(1 inserts, 1 deletes, 2 drops)" in r.output
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    c = read_capture(str(out))
    assert not c.truncated and c.header["netns"] == "host"
    assert [(x["src"], x["container"]) for x in c.of("insert") + c.of("delete")] == \
        [("10.0.0.1", "web-1"), ("10.0.0.1", "web-1")]
    assert [x["sport"] for x in c.of("drop")] == [5, 6]
    assert len(c.of("stats")) >= 3 and c.of("stats")[0]["count"] == 3
    assert c.of("entries")[0]["by"] == {"web-1": 2, "198.18.0.9": 1}
    end = c.of("end")[0]
    assert end["totals"] == {"insert": 1, "delete": 1, "drop": 2}
    assert end["sources"] == {"198.18.0.9": 2} and end["names"] == {"198.18.0.9": "batch-7"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_force_keeps_the_old_capture_when_the_disk_fills_mid_write(capture_cli, tmp_path, monkeypatch):
    old = tmp_path / "old.ctcap"
    old.write_text("the old capture")
    seen = []
    real_fdopen = os.fdopen

    class FullDisk:
        """The capture's temporary file on a disk that fills after 64 bytes."""
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 64:
                seen.append(old.read_text())         # what the old name holds mid-write
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return FullDisk(f) if name.startswith(".old.ctcap.") else f
    monkeypatch.setattr(os, "fdopen", fdopen)
    r = capture_cli("-o", str(old), "--force", "--duration", "1s", "--interval", "0.2")
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"cttrace: error: cannot record to {old}: No space left on device; the old file is unchanged"]
    assert seen and set(seen) == {"the old capture"}
    assert old.read_text() == "the old capture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ctcap"]      # the temporary is gone


def test_writer_names_the_file_only_when_complete(tmp_path, monkeypatch):
    p = tmp_path / "c.ctcap"
    w = Writer(str(p), HDR)
    w.write({"k": "stats", "t": 1000.0, "count": 1, "max": 10, "kernel": {"drop": 0}})
    w.flush()
    assert not p.exists()                                  # not yet: incomplete
    w.close()
    assert read_capture(str(p)).of("stats")[0]["count"] == 1

    p.write_text("old")
    w = Writer(str(p), HDR, overwrite=True)
    w.write({"k": "end", "t": 1001.0})

    def no_sync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fsync", no_sync)
    with pytest.raises(CaptureError, match=r"c.ctcap: cannot write: Input/output error; nothing was changed"):
        w.close()
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["c.ctcap"]


def test_without_hard_links_the_complete_file_is_renamed(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(os, "link", no_links)
    p = tmp_path / "c.ctcap"
    w = Writer(str(p), HDR)
    w.write({"k": "end", "t": 1001.0})
    w.close()
    assert read_capture(str(p)).of("end") and sorted(x.name for x in tmp_path.iterdir()) == ["c.ctcap"]


class BurstSession:
    """A session whose table refuses new entries for 0.3 s in the middle of a
    capture with a 10 s interval (the limit lowered to the count, then
    raised back): table-full drop events arrive 0.4-0.5 s in, the kernel's
    drop counter rises by 30 then. Its own clock: each wait() moves it on,
    and the recorder's clocks read it (no real sleeping, so a loaded machine
    runs the same pumps)."""
    stopping = False
    entry_sink = None
    names = None
    T0 = 1_700_000_000.0

    def __init__(self):
        self.t = 0.0

    def wait(self, seconds):
        self.t = round(self.t + seconds, 6)
        return [_drop("198.18.0.9", 7, self.T0 + self.t)] if 0.4 <= self.t < 0.5 else []

    def read_table(self):
        full = 0.35 <= self.t < 0.7
        return TableState(count=120 if full else 40, max=120 if full else 1000, buckets=64,
                          cpu=[{"cpu": 0, "drop": 30 if self.t >= 0.4 else 0, "insert_failed": 0}])


def test_a_burst_shorter_than_the_interval_is_sampled_at_its_limit(tmp_path, monkeypatch):
    from tracer.core.report import analyse
    from tracer.live.recorder import Recorder
    session = BurstSession()
    monkeypatch.setattr("tracer.live.recorder.time.monotonic", lambda: session.t)
    monkeypatch.setattr("tracer.live.recorder.time.time", lambda: session.T0 + session.t)
    rec = Recorder(session, 10.0, "node")
    rec._entries_due = float("inf")            # no entries dumps here
    p = tmp_path / "c.ctcap"
    w = Writer(str(p), {**HDR, "interval": 10.0, "state": {"count": 40, "max": 1000}})
    rec.start(w)
    rec.run(1.0)
    rec.sample()                               # the last stats record (finish() also reads the backend)
    w.close()
    stats = read_capture(str(p)).of("stats")
    # the start, one taken while the drops arrived (not one per pump), the end
    assert [(s["count"], s["max"]) for s in stats] == [(40, 1000), (120, 120), (40, 1000)]
    rep = analyse(read_capture(str(p)))
    assert rep["totals"]["table_full"] == 30
    assert (rep["bursts"][0]["count"], rep["bursts"][0]["max"]) == (120, 120)
    assert rep["summary"][0].endswith(", table at its limit of 120."), rep["summary"]
    assert [f["severity"] for f in rep["findings"] if f["id"] == "dropping_now"] == ["critical"]
