"""Host integration tests: root, the real kernel, namespaces made here."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import lab

ROOT = Path(__file__).resolve().parents[2]
CTTRACE = str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "cttrace")


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, ctnetlink)"
    elif not shutil.which("iptables"):
        reason = "needs iptables (to switch conntrack on in test namespaces)"
    elif not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
        reason = "needs nf_conntrack in the kernel"
    if reason:
        for item in items:
            if "tests/host/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers():
    if os.geteuid() == 0:
        lab.cleanup_leftovers()
    yield
    if os.geteuid() == 0:
        lab.cleanup_leftovers()


@pytest.fixture
def ns():
    with lab.Netns("t") as n:
        yield n


def wait_ready(p: subprocess.Popen, ready: Path, timeout: float = 60) -> None:
    """Until a command started with --ready-file is ready; fails with its
    stderr (a pipe) if it exits first, or when `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert p.poll() is None, p.stderr.read() if p.stderr else f"exit status {p.returncode}"
        assert time.monotonic() < deadline, f"not ready within {timeout} s"
        time.sleep(0.05)


def start_capture(netns: str, out: Path, seconds: int, ready: Path) -> subprocess.Popen:
    """`cttrace capture` of a namespace for `seconds`, started and ready."""
    p = subprocess.Popen([CTTRACE, "capture", "-o", str(out), "--duration", f"{seconds}s", "--netns", netns,
                          "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True)
    wait_ready(p, ready)
    return p


def cttrace(*args, check=True, user=None):
    cmd = [CTTRACE, *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"cttrace {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def cttrace_json(*args):
    return json.loads(cttrace(*args, "--json").stdout)


@pytest.fixture(scope="module")
def needs_tracepoint():
    """Skip unless skb:kfree_skb carries drop reasons (the tracepoint backend)."""
    from tracer.kernel.features import check_tracepoint, mount_tracefs
    mount_tracefs()
    c = check_tracepoint()
    if not c.ok:
        pytest.skip(f"needs tracepoint skb:kfree_skb with drop reasons: {c.detail}")


def lab_fixture(prefix: str, **kw):
    """A function-scoped fixture: a fresh lab under `prefix`, always torn down."""
    @pytest.fixture
    def _lab():
        lab.lab_down(prefix)
        with lab.Lab(prefix=prefix, **kw) as lb:
            yield lb
    return _lab
