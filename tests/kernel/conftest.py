"""Kernel tests: need a full kernel (kprobes on nf_conntrack's functions).
They skip here with the reason, and run in the VM stage (scripts/vmtest)
on Debian's stock kernel."""

import os

import pytest

from tests import lab as L
from tracer.kernel.features import check_kprobes, mount_tracefs

PREFIX = "ctlabk-"


def _reason():
    if os.geteuid() != 0:
        return "needs root"
    mount_tracefs()
    k = check_kprobes()
    if not k.ok:
        return f"needs kprobes on nf_conntrack ({k.detail}): runs in the VM stage, scripts/vmtest"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _reason()
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def backend():
    """The kprobe backend, compiled and attached once for the session."""
    from tracer.backends.kprobe import KprobeBackend
    b = KprobeBackend(rate=100000, burst=100000).start()
    yield b
    b.close()


@pytest.fixture
def lab():
    L.lab_down(PREFIX)
    with L.Lab(containers=2, prefix=PREFIX) as lab:
        yield lab


@pytest.fixture
def lab4():
    """Four containers: one sender per vCPU."""
    L.lab_down(PREFIX)
    with L.Lab(containers=4, prefix=PREFIX) as lab:
        yield lab
