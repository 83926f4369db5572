"""The package as a user gets it: a wheel built from this checkout, installed
into a fresh venv outside the checkout (Debian's BCC visible through
--system-site-packages), and real commands run from that install, with the
working directory elsewhere so that nothing is imported from the source tree."""

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.host.conftest import lab_fixture

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SYSTEM_PYTHON = "/usr/bin/python3"
COMMANDS = ["snapshot", "features", "drops", "top", "capture", "report", "doctor", "serve"]

lab = lab_fixture("ctlabp-", containers=2)


def _copy_source(dst: Path) -> None:
    """The checkout as it stands (uncommitted files too), without build
    leftovers, so that building never writes into the checkout."""
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.pyc"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, a working directory outside the checkout, the wheel's file list)."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"needs {SYSTEM_PYTHON} (Debian's python3, for python3-bpfcc)")
    base = tmp_path_factory.mktemp("pkg")
    src, wheels, venv, work = base / "src", base / "wheels", base / "venv", base / "work"
    _copy_source(src)
    work.mkdir()
    run = dict(capture_output=True, text=True, cwd=work, timeout=600)
    r = subprocess.run([SYSTEM_PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", str(wheels), str(src)], **run)
    assert r.returncode == 0, r.stdout + r.stderr
    whl = sorted(wheels.glob("cttrace-*.whl"))
    assert len(whl) == 1, list(wheels.iterdir())
    r = subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], **run)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        str(whl[0])], **run)
    assert r.returncode == 0, r.stdout + r.stderr
    with zipfile.ZipFile(whl[0]) as z:
        names = z.namelist()
    return venv, work, names


def _env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def cttrace(installed, *args, timeout=120):
    venv, work, _ = installed
    return subprocess.run([str(venv / "bin" / "cttrace"), *args], capture_output=True, text=True,
                          cwd=work, env=_env(venv), timeout=timeout)


def test_the_wheel_holds_every_package_and_the_bpf_sources(installed):
    _, _, names = installed
    src_pkgs = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "tracer").rglob("__init__.py")}
    whl_pkgs = {os.path.dirname(n) for n in names if n.endswith("/__init__.py")}
    assert src_pkgs <= whl_pkgs, src_pkgs - whl_pkgs
    bpf = {p.name for p in (ROOT / "tracer" / "bpf").iterdir() if p.suffix in (".c", ".h")}
    assert bpf and bpf <= {os.path.basename(n) for n in names if n.startswith("tracer/bpf/")}
    assert not any(n.startswith("tests/") for n in names)


def test_imports_come_from_the_install(installed):
    venv, work, _ = installed
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import tracer, tracer.backends, tracer.cli, bcc; print(tracer.__file__)"],
                       capture_output=True, text=True, cwd=work, env=_env(venv))
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip()).resolve()
    assert path.is_relative_to(venv.resolve()), path
    assert not path.is_relative_to(ROOT)


def test_every_command_has_help(installed):
    r = cttrace(installed, "--help")
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert set(COMMANDS) <= listed, listed
    for cmd in sorted(listed):
        r = cttrace(installed, cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"Usage: cttrace {cmd}"), (cmd, r.stderr)


def test_snapshot_of_an_export(installed):
    from tests.lab import KNOWN
    r = cttrace(installed, "snapshot", "--file", str(DATA / "known-acct.conntrack-L-extended"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key, want in KNOWN.items():
        assert out[key] == want, key


def test_bad_option_is_one_line(installed):
    r = cttrace(installed, "snapshot", "--file", "/nonexistent/table.txt")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.root
def test_features(installed, needs_tracepoint):
    r = cttrace(installed, "features", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["checks"]["bcc"]["ok"], out["checks"]["bcc"]
    assert out["checks"]["tracepoint_kfree_skb"]["ok"]
    assert out["backend"] in ("tracepoint", "kprobe")


@pytest.mark.root
def test_drops_table_full_matches_the_kernel(installed, needs_tracepoint, lab, tmp_path):
    venv, work, _ = installed
    ready = tmp_path / "ready"
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        p = subprocess.Popen([str(venv / "bin" / "cttrace"), "drops", "--json", "--duration", "6",
                              "--netns", lab.node, "--ready-file", str(ready)],
                             stdout=out, stderr=err, cwd=work, env=_env(venv))
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert p.poll() is None and time.monotonic() < deadline, \
                    f"cttrace drops did not start: {open(tmp_path / 'err').read()}"
                time.sleep(0.05)
            r = lab.table_full(lab.containers[0], k=150, admit=60)
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out.seek(0)
        err.seek(0)
        events = [json.loads(l) for l in out if l.strip()]
        stderr = err.read()
    full = [e for e in events if e["reason"] == "table_full"]
    assert len(full) == r.kernel_drop == len(r.dropped) > 0, stderr
    assert {(e["src"], e["sport"], e["dst"], e["dport"]) for e in full} == \
           {(f.src, f.sport, f.dst, f.dport) for f in r.dropped}
    summary = json.loads(stderr.strip().splitlines()[-1])["summary"]
    assert summary["shown"] == len(events)
    node_inum = os.stat(f"/run/netns/{lab.node}").st_ino
    assert summary["table_full"][str(node_inum)] == r.kernel_drop    # the kernel's own count
    assert "Traceback" not in stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
