"""Image tests: the cttrace image run as deploy/daemonset.yaml runs it.
They need the image and a container runtime, which scripts/imagetest
provides (and says so in CTTRACE_IMAGE_REF / CTTRACE_IMAGE_CTR); elsewhere
they skip with that reason."""

import os

import pytest

from tests import lab as L


def pytest_collection_modifyitems(config, items):
    reason = None
    if not os.environ.get("CTTRACE_IMAGE_REF"):
        reason = "runs in the image stage (scripts/imagetest), which builds the image"
    elif os.geteuid() != 0:
        reason = "needs root"
    for item in items:
        if "tests/image/" in str(item.fspath):
            item.add_marker(pytest.mark.image)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab():
    L.lab_down("ctlabi-")
    with L.Lab(containers=2, prefix="ctlabi-") as lb:
        yield lb
