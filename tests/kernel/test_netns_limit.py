"""Per-namespace conntrack limits on each kernel of the VM matrix (Debian's
5.10, 6.1, 6.12): none has one. In a child namespace nf_conntrack_max is the
global value, read-only (upstream 2671fa4dc010: 5.13, and the 5.10.35
stable release), struct netns_ct has no sysctl_max, a write is refused,
and the doctor's reading of the namespace says the limit is global. (The
CLI's side is tests/host/test_doctor_scope.py on the host's kernel; here
in-process, since every command costs seconds under emulation.)"""

import errno
import os
import platform
import stat

from tests import lab as L
from tracer.kernel import host as hoststate
from tracer.kernel import netns

CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def test_no_kernel_of_the_matrix_has_a_per_namespace_limit():
    glob = int(open(CT_MAX).read())
    with L.Netns("lim") as ns:
        with netns.entered(ns.name):
            mode = os.stat(CT_MAX).st_mode
            assert not mode & stat.S_IWUSR, (platform.release(), oct(mode))
            assert int(open(CT_MAX).read()) == glob
            try:
                with open(CT_MAX, "w") as f:
                    f.write(str(glob))
                raise AssertionError(f"{platform.release()}: nf_conntrack_max writable in a namespace")
            except PermissionError as e:
                assert e.errno == errno.EACCES
            assert hoststate.per_netns_max() is False, platform.release()
            assert hoststate.max_scope() == "global"
        h = hoststate.read_live(ns.name, window=0.1)
        assert h.max_scope == "global" and h.max == glob and h.max_global is None
        from tracer.core.doctor import scope_note
        assert "the limit is global on this kernel" in scope_note(h)
