"""Whose nf_conntrack_max a namespace meets, and what the doctor says of it.

The three shapes the kernels have (see hoststate.max_scope):
- read-only in a child namespace, the one global value (5.10.35+ .. 6.18);
- writable in a child namespace but the global variable (before 5.10.35/5.13);
- a per-namespace value, capped by the initial namespace's (struct netns_ct
  with sysctl_max: netfilter's nf-next after 6.18).
This host's kernel has only the first; the others are told apart here by
the file's mode and BTF, faked."""

import os
import stat

import pytest

from tracer.kernel import host as hoststate
from tracer.core.doctor import HostState, diagnose


class _Stat:
    def __init__(self, mode):
        self.st_mode = stat.S_IFREG | mode


@pytest.mark.parametrize("mode,btf,release,scope", [
    (0o444, False, "6.18.0", "global"),
    (0o444, None, "5.10.0", "global"),
    (0o644, False, "5.10.20", "global-writable"),      # BTF: no sysctl_max in netns_ct
    (0o644, True, "6.19.0", "netns"),                  # BTF: netns_ct.sysctl_max
    (0o644, None, "5.10.20", "global-writable"),       # no BTF: no kernel up to 6.18 has its own
    (0o644, None, "6.19.2", "netns"),
])
def test_max_scope(monkeypatch, mode, btf, release, scope):
    real = os.stat
    monkeypatch.setattr(hoststate.os, "stat",
                        lambda p, *a, **k: _Stat(mode) if p == hoststate.CT_MAX else real(p, *a, **k))
    monkeypatch.setattr(hoststate, "per_netns_max", lambda: btf)
    assert hoststate.max_scope(release) == scope


def test_per_netns_max_reads_btf(monkeypatch):
    from tracer.kernel import btf as B

    class Fake:
        def __init__(self, members):
            self.members = members

        def find(self, name):
            if self.members is None:
                raise B.BTFError("no netns_ct")
            return 1

        def offset(self, struct, member):
            if member not in self.members:
                raise B.BTFError("no member")
            return 8

    for members, want in ((["count", "sysctl_max"], True), (["count"], False), (None, None)):
        monkeypatch.setattr(B.BTF, "load", classmethod(lambda cls, *a, **k: Fake(members)))
        assert hoststate.per_netns_max() is want
    # this machine's kernel (6.18): BTF present, no per-namespace limit
    monkeypatch.undo()
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        assert hoststate.per_netns_max() is False


def test_effective_max():
    assert hoststate.effective_max(1000, 262144) == 1000
    assert hoststate.effective_max(1000000, 262144) == 262144
    assert hoststate.effective_max(0, 262144) == 262144          # 0: no limit of its own
    assert hoststate.effective_max(5000, 0) == 5000
    assert hoststate.effective_max(None, 7) == 7


def _full(**kw):
    return {f.id: f for f in diagnose(HostState(count=950, max=1000, buckets=1000, total=950, **kw))}


def test_doctor_says_the_limit_is_global_in_a_namespace():
    f = _full(netns="4242", max_scope="global")["table_full"]
    assert "the limit is global on this kernel: one value for every namespace" in f.evidence
    assert "each namespace's own count is checked against it" in f.evidence
    assert "run these on the host, not in the namespace" in f.fix
    assert "every namespace may then hold that many entries" in f.fix
    w = _full(netns="4242", max_scope="global-writable")["table_full"]
    assert "the limit is global on this kernel" in w.evidence
    assert "changes the global value (fixed in 5.10.35 and 5.13)" in w.fix
    # the host itself: nothing about namespaces
    h = _full(netns="host", max_scope="global")["table_full"]
    assert "global" not in h.evidence and "namespace" not in h.fix


def test_doctor_own_limit_capped_by_the_initial_one():
    f = _full(netns="4242", max_scope="netns", max_global=1000, max_own=5000)["table_full"]
    assert "this namespace's own setting is 5,000, capped by the initial namespace's 1,000" in f.evidence
    assert "run the sysctl inside it" in f.fix
    assert "capped by the initial namespace's 1,000: raise that on the host too" in f.fix


def test_view_header_names_the_scope():
    import io

    from rich.console import Console

    from tracer.views.doctor import render
    c = Console(record=True, width=100, color_system=None, file=io.StringIO())
    st = HostState(netns="blue", count=10, max=1000, max_scope="global")
    c.print(render([], st))
    assert c.export_text().splitlines()[:2] == [
        "cttrace doctor: netns blue, table 10/1,000, 0 finding(s)",
        "limit: one global nf_conntrack_max, checked against each namespace's own count"]


def test_a_capture_keeps_the_namespaces_own_setting():
    from tracer.formats.capture import state_fields as _clean_state
    st = _clean_state({"netns": "4242", "count": 10, "max": 1000, "max_scope": "netns",
                       "max_global": 1000, "max_own": 5000})
    assert st["max_own"] == 5000 and st["max"] == 1000
