"""The lab sequence of CONTRIBUTING.md, run as a new user would: `scripts/lab up`,
then `load` (twice) in the lab that is up, `status`, `down`; the flows each
load reports are in the node's table (conntrack -L), and the second load
makes new 5-tuples instead of reusing ones whose entries still live."""

import os
import subprocess
from pathlib import Path

import pytest

from tests import lab as L

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "ctlabc-"      # not the interactive lab's prefix: never a developer's lab


def lab(*args, check=True):
    r = subprocess.run([str(ROOT / "scripts" / "lab"), *args, "--prefix", PREFIX], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"scripts/lab {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


@pytest.fixture
def up():
    L.lab_down(PREFIX)
    try:
        yield lab("up", "--containers", "2")
    finally:
        lab("down")
        assert not L.lab_namespaces(PREFIX)
        assert not (L.STATE_DIR / f"{PREFIX}state.json").exists()


def _udp_53_by_src(node: str) -> dict:
    """The node's UDP entries to the peer's :53, per container address and
    source port set, as conntrack(8) lists them."""
    entries = L.Lab(2, prefix=PREFIX)
    assert entries.node == node
    out: dict = {}
    for flow, _ in entries.node_entries():
        if flow.proto == "udp" and flow.dst == L.UPLINK_PEER and flow.dport == L.UDP_PORT:
            out.setdefault(flow.src, set()).add(flow.sport)
    return out


def test_readme_sequence_loads_the_lab_that_is_up(up):
    assert f"containers {PREFIX}c1 {PREFIX}c2" in up.stdout
    r = lab("load", "--udp", "20", "--tcp-short", "5")
    assert f"udp from {PREFIX}c1: 20/20 ok, 0 failed" in r.stdout
    assert f"udp from {PREFIX}c2: 20/20 ok, 0 failed" in r.stdout
    assert f"tcp_short from {PREFIX}c2: 5/5 ok" in r.stdout
    assert lab("status").stdout.startswith("lab up:")              # still up after the load
    first = _udp_53_by_src(f"{PREFIX}node")
    c1, c2 = L.Lab.container_ip(f"{PREFIX}c1"), L.Lab.container_ip(f"{PREFIX}c2")
    assert {k: len(v) for k, v in first.items()} == {c1: 20, c2: 20}

    r = lab("load", "--udp", "10")                                  # again: new source ports
    assert f"udp from {PREFIX}c1: 10/10 ok" in r.stdout
    second = _udp_53_by_src(f"{PREFIX}node")
    assert {k: len(v) for k, v in second.items()} == {c1: 30, c2: 30}
    assert first[c1] < second[c1] and first[c2] < second[c2]


def test_load_refuses_a_shape_the_running_lab_lacks(up):
    r = lab("load", "--udp", "1", "--vxlan", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == ("lab: the lab that is up has 2 containers, no node2: drop --containers/"
                                "--vxlan, or 'scripts/lab down' and 'up' with them")


def test_load_without_a_lab_brings_one_up_and_down():
    L.lab_down(PREFIX)
    r = lab("load", "--udp", "3")
    assert f"udp from {PREFIX}c1: 3/3 ok" in r.stdout
    assert not L.lab_namespaces(PREFIX)


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root")
