"""Files cttrace writes and reads next to other people's (issue 20, item 7):
the HTML report is private and replaced only by a complete file, the
ready-file never goes through a link nor truncates, gzip exports have an
expansion bound, --jobs a limit, namespace names print escaped."""

import errno
import gzip
import os
import stat

import pytest
from tests.clirunner import runner

from tracer.cli import main
from tracer.core.events import Counters, SourceCounts
from tracer.formats import capture as capmod
from tracer.formats import export
from tracer.formats.capture import CaptureError
from tracer.formats.files import ReadyFileError, check_ready_file, write_ready_file
from tracer.kernel import netns as ns
from tracer.views.drops import summary

from tests.unit.test_hostile_inputs import _capture

def _run(*args):
    r = runner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def test_html_report_is_private_whatever_the_umask(tmp_path):
    p = _capture(tmp_path / "c")
    old = os.umask(0)
    try:
        r = _run("report", str(p), "--html", str(tmp_path / "r.html"))
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(tmp_path / "r.html").st_mode) == 0o600      # base: 0644


def test_force_on_a_full_disk_keeps_the_old_report(tmp_path, monkeypatch):
    p = _capture(tmp_path / "c")
    out = tmp_path / "r.html"
    out.write_text("the old report")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(capmod.os, "write", full)
    r = _run("report", str(p), "--html", str(out), "--force")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "No space left on device; nothing was changed" in r.output
    assert out.read_text() == "the old report"                 # base: an empty file
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c", "r.html"]   # no temporary left


def test_report_without_force_never_replaces_a_file_made_meanwhile(tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    real = capmod.refuse_existing

    def race(path, overwrite):               # the check passes, then someone makes the file
        real(path, overwrite)
        out.write_text("theirs")
    monkeypatch.setattr(capmod, "refuse_existing", race)
    with pytest.raises(CaptureError, match="already exists"):
        capmod.write_new(str(out), "<html>")
    assert out.read_text() == "theirs"
    assert [x.name for x in tmp_path.iterdir()] == ["r.html"]


def test_empty_html_name_is_a_usage_error(tmp_path):
    p = _capture(tmp_path / "c")
    r = _run("report", str(p), "--html", "")
    assert r.exit_code == 2 and "--html needs a file name" in r.output     # base: exit 0, nothing


@pytest.mark.parametrize("target_exists", [True, False])
def test_ready_file_never_follows_a_link_nor_truncates(tmp_path, target_exists):
    victim = tmp_path / "victim"
    if target_exists:
        victim.write_text("precious")
    link = tmp_path / "ready"
    link.symlink_to(victim)
    write_ready_file(str(link))
    assert not link.is_symlink() and link.read_text() == f"{os.getpid()}\n"
    assert (victim.read_text() == "precious") if target_exists else not victim.exists()
    hard = tmp_path / "hard"
    os.link(victim if target_exists else link, hard)
    write_ready_file(str(hard))                                 # a new inode: the old one untouched
    if target_exists:
        assert victim.read_text() == "precious"


@pytest.mark.parametrize("cmd", ["drops", "top", "serve", "capture"])
def test_unwritable_ready_file_fails_before_anything_attaches(tmp_path, cmd):
    extra = ["-o", str(tmp_path / "c")] if cmd == "capture" else []
    for bad, why in ((tmp_path / "no" / "such" / "dir" / "r", "No such file or directory"),
                     (tmp_path, "is a directory")):
        r = _run(cmd, *extra, "--ready-file", str(bad))
        assert r.exit_code == 2, r.output
        assert "Invalid value for '--ready-file'" in r.output and why in r.output
    assert _run(cmd, *extra, "--ready-file", "").exit_code == 2
    with pytest.raises(ReadyFileError):
        check_ready_file(str(tmp_path / "missing" / "r"))


def test_gzip_export_bomb_is_one_line(tmp_path, monkeypatch):
    """Expansion bound: past FLOOR, at most RATIO times the compressed bytes
    read (256 MiB and 100 in use; made small here to keep the test short)."""
    monkeypatch.setattr(export, "FLOOR", 1 << 20)
    line = (b"ipv4     2 udp      17 20 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=53 [UNREPLIED] "
            b"src=10.0.0.2 dst=10.0.0.1 sport=53 dport=1 mark=0 zone=0 use=2\n")
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb", 9) as f:
        f.write(line + b"\n" * (64 << 20))
    r = _run("snapshot", "--file", str(p))
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "(over 100 times): not a table export (a compression bomb?)" in r.output
    ok = tmp_path / "ok.gz"
    table = b"".join(line.replace(b"sport=1 ", b"sport=%d " % (1024 + i)).replace(b"dport=1 ", b"dport=%d "
                     % (1024 + i)).replace(b" 20 ", b" %d " % (i % 30)) for i in range(20000))
    ok.write_bytes(gzip.compress(table))                       # a real table's kind: far under 100
    assert len(table) > 2 * export.FLOOR
    assert _run("snapshot", "--file", str(ok)).exit_code == 0


@pytest.mark.parametrize("cmd", [["snapshot", "--file", "x"], ["doctor", "--file", "x"]])
def test_jobs_has_an_upper_bound(cmd):
    r = _run(*cmd, "--jobs", "100000")
    assert r.exit_code == 2 and "100000 is not in the range 1<=x<=64" in r.output


def test_namespace_names_print_escaped(monkeypatch):
    name = "x\x1b]0;owned\x07\n  999 from 10.0.0.1"
    c = Counters(backend="tracepoint", by_reason={"table_full": 3},
                 sources=[SourceCounts(netns=7, src="10.0.0.9", table_full=3)])
    lines = summary(c, 3, netns_name=lambda inum: name)
    assert len(lines) == 2 and "\x1b" not in lines[1] and "\\x1b]0;owned\\x07\\x0a" in lines[1]
    monkeypatch.setattr(ns.os.path, "exists", lambda p: False)
    monkeypatch.setattr(ns.os.path, "isdir", lambda p: True)
    monkeypatch.setattr(ns.os, "listdir", lambda p: [name])
    with pytest.raises(ns.NetnsError) as e:
        ns.resolve("blue")
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)
