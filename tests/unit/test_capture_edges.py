"""The edges of capture files: the writer never follows a link or replaces
a file unless asked; the reader bounds what it decompresses (bombs)."""

import json
import os
import resource
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tracer.formats.capture import CaptureError, Writer, read_capture, write_new

ROOT = Path(__file__).resolve().parents[2]
HDR = {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node", "interval": 1.0}


def _write(path, overwrite=False):
    w = Writer(str(path), HDR, overwrite=overwrite)
    w.write({"k": "stats", "t": 1000.0, "count": 1, "max": 10, "kernel": {"drop": 0}})
    w.write({"k": "end", "t": 1001.0})
    w.close()


def test_existing_file_is_not_clobbered(tmp_path):
    p = tmp_path / "c.ctcap"
    p.write_text("keep me")
    with pytest.raises(CaptureError) as e:
        Writer(str(p), HDR)
    assert str(e.value) == (f"{p} already exists (a file): not overwriting it; choose another "
                            "name or use --force to replace it")
    assert p.read_text() == "keep me"


@pytest.mark.parametrize("target_exists", [True, False])
def test_symlink_is_not_followed(tmp_path, target_exists):
    victim = tmp_path / "victim"
    if target_exists:
        victim.write_text("precious")
    link = tmp_path / "c.ctcap"
    link.symlink_to(victim)
    with pytest.raises(CaptureError, match="symbolic link to .*victim.*--force"):
        Writer(str(link), HDR)
    assert link.is_symlink()
    if target_exists:
        assert victim.read_text() == "precious"
    else:
        assert not victim.exists()           # a dangling link does not create its target


def test_overwrite_replaces_the_link_not_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o644)
    link = tmp_path / "c.ctcap"
    link.symlink_to(victim)
    _write(link, overwrite=True)
    assert not link.is_symlink() and victim.read_text() == "precious"
    assert oct(link.stat().st_mode & 0o777) == "0o600"
    assert read_capture(str(link)).of("stats")[0]["count"] == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.ctcap", "victim"]   # no temp left


def test_overwrite_replaces_a_file_with_a_private_one(tmp_path):
    p = tmp_path / "c.ctcap"
    p.write_text("old")
    p.chmod(0o666)
    _write(p, overwrite=True)
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    cap = read_capture(str(p))
    assert not cap.truncated and len(cap.records) == 2


def test_a_directory_is_refused_even_with_overwrite(tmp_path):
    for ow in (False, True):
        with pytest.raises(CaptureError, match="is a directory"):
            Writer(str(tmp_path), HDR, overwrite=ow)


def test_write_new_for_html(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "r.html"
    link.symlink_to(victim)
    with pytest.raises(CaptureError, match="already exists"):
        write_new(str(link), "<html>")
    write_new(str(link), "<html>", overwrite=True)
    assert link.read_text() == "<html>" and victim.read_text() == "precious"


# -- bombs ----------------------------------------------------------------------------------
def _bomb(path, pattern: bytes, mib: int, header=True):
    """A gzip file of a capture header then `mib` MiB of `pattern`,
    compressed chunk by chunk (never held whole in memory)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = (pattern * ((1 << 20) // len(pattern) + 1))[: 1 << 20]
    with open(path, "wb") as f:
        if header:
            f.write(c.compress(json.dumps({"format": "cttrace-capture", "version": 1}).encode() + b"\n"))
        for _ in range(mib):
            f.write(c.compress(chunk))
        f.write(c.flush())
    return path


def test_bomb_over_the_byte_cap_is_one_error(tmp_path):
    p = _bomb(tmp_path / "b", b"\n", 40)
    assert os.path.getsize(p) < 100_000
    with pytest.raises(CaptureError, match=r"decompresses to more than 8 MiB .*compression bomb"):
        read_capture(str(p), max_bytes=8 << 20)
    assert len(read_capture(str(p), max_bytes=64 << 20).records) == 0      # under the cap: read


def test_a_record_over_the_line_cap_is_one_error(tmp_path):
    p = _bomb(tmp_path / "b", b"\0", 20)
    with pytest.raises(CaptureError, match=r"a record longer than 1 MiB"):
        read_capture(str(p), max_line=1 << 20)
    p = _bomb(tmp_path / "h", b"\0", 20, header=False)     # even the header line
    with pytest.raises(CaptureError, match=r"a record longer than 1 MiB"):
        read_capture(str(p), max_line=1 << 20)


def test_report_on_a_bomb_with_default_limits_stays_small():
    """300 MiB of newlines (about 300 KB compressed) through `cttrace
    report` in a child: one error line, and the child's peak memory is a
    small fraction of what the whole stream would take."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = _bomb(Path(d) / "bomb.ctcap", b"\n", 300)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = subprocess.run([sys.executable, "-m", "tracer", "report", str(p)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cttrace: error:")
    assert "decompresses to more than 64 MiB" in lines[0]
    if peak_kib > before:                    # the high-water mark of this child
        assert peak_kib < 150 * 1024, peak_kib
