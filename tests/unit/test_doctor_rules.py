"""The doctor's declared rule table (tracer/core/doctor.RULES): each rule
gives only the finding ids it declares, and every declared id is a finding
documented in docs/doctor.md (and the reverse)."""

import re
from fnmatch import fnmatch
from pathlib import Path

from tracer.core.doctor import RULES, HostState, context

DOC = Path(__file__).resolve().parents[2] / "docs" / "doctor.md"


def test_declared_ids_are_the_documented_findings():
    documented = set(re.findall(r"^### `([a-z0-9_]+)`", DOC.read_text(), re.M))
    for fid in documented:
        owners = [r.family for r in RULES if any(fnmatch(fid, p) for p in r.ids)]
        assert len(owners) == 1, (fid, owners)
    for r in RULES:
        for p in r.ids:
            assert any(fnmatch(fid, p) for fid in documented), (r.family, p)


def test_each_rule_gives_only_its_declared_ids():
    """A state that trips most rules at once: full table, drops, clashes,
    long chains, ESTABLISHED and TIME_WAIT heavy, VXLAN, one heavy source."""
    h = HostState(count=990, max=1000, buckets=100, total=990, window=1.0,
                  deltas={"drop": 50, "insert_failed": 5, "early_drop": 3},
                  stats={"drop": 500, "insert_failed": 40, "early_drop": 30},
                  by_state={"ESTABLISHED": 600, "TIME_WAIT": 350},
                  sysctls={"tcp_timeout_established": 432000, "tcp_timeout_time_wait": 120},
                  by_proto_dport={"udp/4789": 200}, by_src={"10.0.0.9": 700})
    c = context(h)
    seen = set()
    for r in RULES:
        for f in r.check(c):
            assert any(fnmatch(f.id, p) for p in r.ids), (r.family, f.id)
            seen.add(f.id)
    assert {"table_full", "dropping_now", "early_drops", "insert_failed", "hash_chains",
            "established_timeout", "time_wait", "tracked_vxlan", "heavy_source"} <= seen, seen
