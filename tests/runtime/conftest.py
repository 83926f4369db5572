"""Runtime tests: real Docker, containerd and Podman from Debian 12,
started and stopped by the tests (tests/runtimes.py). Root only; a runtime
that cannot start skips its tests with the reason."""

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (container runtimes, network namespaces)"
    elif not shutil.which("nsenter") or not shutil.which("conntrack"):
        reason = "needs nsenter (util-linux) and conntrack (conntrack-tools)"
    for item in items:
        if "tests/runtime/" in str(item.fspath):
            item.add_marker(pytest.mark.runtime)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
