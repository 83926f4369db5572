"""Per-namespace limits on the running kernel: the shape it has (read-only
global value in a child namespace on every kernel up to 6.18; a writable
own value on kernels with netns_ct.sysctl_max), checked against the kernel,
and what `doctor --netns` reports for it."""

import errno
import json
import os
import stat

from tests import lab as L
from tests.host.conftest import cttrace
from tracer.kernel import host as hoststate
from tracer.kernel import netns

CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def test_doctor_reads_the_limit_the_namespace_meets():
    glob = int(open(CT_MAX).read())
    with L.Netns("scope") as ns:
        inside = int(ns.read(CT_MAX))
        with netns.entered(ns.name):
            mode = os.stat(CT_MAX).st_mode
            writable = bool(mode & stat.S_IWUSR)
            own = hoststate.per_netns_max()
        r = cttrace("doctor", "--netns", ns.name, "--json")
        st = json.loads(r.stdout)["state"]
        text = cttrace("doctor", "--netns", ns.name).stdout
        if not writable:
            # the kernel: one value, read-only here; a write is refused
            assert inside == glob
            with netns.entered(ns.name):
                try:
                    with open(CT_MAX, "w") as f:
                        f.write(str(glob))
                    raise AssertionError("nf_conntrack_max was writable in a child namespace")
                except PermissionError as e:
                    assert e.errno == errno.EACCES
            assert st["max_scope"] == "global" and st["max"] == glob and st["max_global"] is None
            assert text.splitlines()[1] == ("limit: one global nf_conntrack_max, checked against each "
                                            "namespace's own count")
        elif own:
            # a per-namespace limit: set one below the initial namespace's, the doctor meets it
            ns.sysctl("net.netfilter.nf_conntrack_max", str(max(glob // 2, 1)))
            st = json.loads(cttrace("doctor", "--netns", ns.name, "--json").stdout)["state"]
            assert st["max_scope"] == "netns" and st["max"] == max(glob // 2, 1)
            assert st["max_global"] == glob
        else:
            # writable but global (kernels before 5.10.35/5.13): never written here
            assert st["max_scope"] == "global-writable" and st["max"] == glob
    # the host's namespace named as a namespace (by this test's PID) is still the host's own limit
    st = json.loads(cttrace("doctor", "--netns", str(os.getpid()), "--json").stdout)["state"]
    assert st["max_scope"] == "global" and st["max"] == glob
    assert int(open(CT_MAX).read()) == glob


def test_doctor_creates_no_table_where_it_reads_the_rules():
    """`doctor` reads; listing a table with iptables-legacy-save creates it
    in the namespace (this kernel: `nat` and `raw` appeared in
    ip_tables_names after a doctor run, before the fix). The kernel's own
    list of legacy tables is the same before and after, both families."""
    with L.Netns("notable") as ns:
        names = ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")
        before = [ns.read(p) for p in names]
        cttrace("doctor", "--netns", ns.name, "--window", "0.1")
        assert [ns.read(p) for p in names] == before
