"""What this kernel and this BCC can do, found by trying the real thing.

`cttrace features` prints the result; backends use it to choose and to
explain what they cannot see. Each check says how it was decided and, when
negative, what is missing and how to fix it.

Kernel history worth knowing: skb:kfree_skb carries a drop reason since
Linux 5.17 (NETFILTER_DROP since 5.19-ish backports vary: read from BTF);
before that, netfilter's drops are the frees called from nf_hook_slow()
(the tracepoint's `location`; measured exact on Debian's 5.10);
BTF in /sys/kernel/btf/vmlinux needs CONFIG_DEBUG_INFO_BTF (5.4+);
fentry/fexit need BPF trampolines (5.5+, x86); the events travel through
a BPF ring buffer (BPF_MAP_TYPE_RINGBUF, 5.8+: every kernel of the test
matrix, 5.10 to 6.18, has it); ctnetlink events need nf_conntrack_netlink (and
nf_conntrack_events not 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import socket
import struct
from dataclasses import asdict, dataclass, field

from tracer.kernel import headers
from tracer.kernel.btf import BTF, BTFError

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class Features:
    checks: dict[str, Check] = field(default_factory=dict)

    def ok(self, name: str) -> bool:
        c = self.checks.get(name)
        return bool(c and c.ok)

    def to_dict(self) -> dict:
        return {k: asdict(v) for k, v in self.checks.items()}


def tracefs() -> str | None:
    for p in TRACEFS:
        if os.path.isdir(os.path.join(p, "events")):
            return p
    return None


def mount_tracefs() -> str | None:
    """Mount tracefs where the kernel expects it (BCC needs it); None if impossible."""
    if tracefs():
        return tracefs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", b"/sys/kernel/tracing", b"tracefs", 0, None) == 0:
        return tracefs()
    return None


def _caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    caps = _caps()
    need = {"CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_NET_ADMIN": 12}
    if caps >> 21 & 1:      # CAP_SYS_ADMIN covers BPF and perf on every kernel
        return Check(True, "CAP_SYS_ADMIN")
    missing = [n for n, bit in need.items() if not caps >> bit & 1]
    if missing:
        return Check(False, f"missing {', '.join(missing)}: run as root (sudo)")
    return Check(True, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN")


def check_bpf_syscall() -> Check:
    # BPF_MAP_CREATE of a 1-entry array: the cheapest real use of bpf(2)
    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack("=IIII", 2, 4, 4, 1) + bytes(112)
    buf = ctypes.create_string_buffer(attr)
    fd = libc.syscall(321, 0, buf, len(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Check(False, f"bpf(2) refused: {os.strerror(err)}"
                     + (" (run as root)" if err == 1 else ""))
    os.close(fd)
    return Check(True, "bpf(2) map create works")


def check_btf() -> Check:
    try:
        b = BTF.load()
        b.offset("sk_buff", "_nfct")
        return Check(True, "/sys/kernel/btf/vmlinux")
    except BTFError as e:
        return Check(False, f"{e} (kernel built without CONFIG_DEBUG_INFO_BTF)")


def _kfree_skb_format() -> str | None:
    tf = tracefs()
    try:
        with open(os.path.join(tf or TRACEFS[0], "events/skb/kfree_skb/format")) as f:
            return f.read()
    except OSError:
        return None


def ksym_range(name: str) -> tuple[int, int] | None:
    """(address, size) of a kernel text symbol from /proc/kallsyms (root:
    addresses read as 0 otherwise); the size runs to the next symbol."""
    start, addrs = None, []
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                a = int(parts[0], 16)
                addrs.append(a)
                if parts[2] == name and parts[1] in "tT" and start is None:
                    start = a
    except (OSError, ValueError):
        return None
    if not start:
        return None
    after = [a for a in addrs if a > start]
    return (start, min(after) - start) if after else None


def drop_filter() -> tuple[str, dict, str] | None:
    """How the drop probe tells netfilter's drops among all skb frees:
    ("reason", {}, why) on Linux 5.17+ (reason NETFILTER_DROP, its value from
    BTF), ("location", {"NF_HOOK_SLOW": a, "NF_HOOK_SLOW_SIZE": n}, why) on
    older kernels: nf_hook_slow() is the one place that frees a packet on an
    NF_DROP verdict (rules and conntrack's own refusals alike), and the
    tracepoint's `location` is the caller of kfree_skb(). None if neither."""
    text = _kfree_skb_format()
    if text is None:
        return None
    if "reason" in text and "NETFILTER_DROP" in text:
        return "reason", {}, "skb:kfree_skb with reason NETFILTER_DROP"
    if "location" in text:
        r = ksym_range("nf_hook_slow")
        if r and not ksym_range("nf_hook_slow.cold"):
            return "location", {"NF_HOOK_SLOW": r[0], "NF_HOOK_SLOW_SIZE": r[1]}, (
                "skb:kfree_skb has no drop reason (Linux 5.17+): netfilter drops are the frees "
                "called from nf_hook_slow (its NF_DROP verdict)")
    return None


def check_tracepoint() -> Check:
    tf = tracefs()
    if tf is None:
        return Check(False, "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")
    text = _kfree_skb_format()
    if text is None:
        return Check(False, "no tracepoint skb:kfree_skb in this kernel")
    d = drop_filter()
    if d is None:
        if "reason" in text:
            return Check(False, "skb:kfree_skb has no NETFILTER_DROP reason in this kernel, and "
                         "nf_hook_slow is not in /proc/kallsyms")
        return Check(False, "skb:kfree_skb has no drop reason (Linux 5.17+) and nf_hook_slow "
                     "is not in /proc/kallsyms (run as root) to find netfilter's drops by call site")
    return Check(True, d[2])


# conntrack's functions the kprobe backend needs (tracer/backends/kprobe.py
# attaches them; early_drop is optional there)
KPROBE_FUNCS = ("__nf_conntrack_alloc", "__nf_conntrack_confirm", "nf_ct_delete")


def probeable() -> set[str]:
    """Functions kprobes can attach to (available_filter_functions)."""
    out = set()
    try:
        with open(os.path.join(tracefs() or TRACEFS[0], "available_filter_functions")) as f:
            for line in f:
                if line.strip():
                    out.add(line.split()[0])
    except OSError:
        pass
    return out


def check_kprobes() -> Check:
    if not os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        tf = tracefs()
        if not (tf and os.path.exists(os.path.join(tf, "kprobe_events"))):
            return Check(False, "no kprobe support (kernel built without CONFIG_KPROBES)")
    have = probeable()
    missing = [f for f in KPROBE_FUNCS if f not in have]
    if missing:
        return Check(False, f"kprobes exist but {', '.join(missing)} cannot be probed "
                     "(nf_conntrack not loaded, or inlined)")
    return Check(True, "kprobe PMU; " + ", ".join(KPROBE_FUNCS) + " probeable")


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level writes to fd 2 and fd 1 while BCC compiles: libbpf and
    BCC print to stderr, and BCC 0.26 prints "Unable to find kernel headers"
    on stdout, which would break `--json` output."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


def check_headers() -> Check:
    """A header tree BCC can compile with (tracer/kernel/headers.py): the kernel's
    own, or the closest installed one (BCC_KERNEL_SOURCE is set for BCC)."""
    h = headers.ensure()
    return Check(h.path is not None, h.detail)


def check_bcc() -> Check:
    """Can BCC compile and load a program here (kernel headers usable)?"""
    try:
        from bcc import BPF  # noqa: F401  (BCC: loaded only when asked about, see check_bcc)
    except ImportError:
        return Check(False, "BCC is missing: apt-get install python3-bpfcc (system Python)")
    h = headers.ensure()
    if h.path is None:
        return Check(False, f"BCC cannot compile: {h.detail}")
    try:
        with quiet_stderr():
            b = BPF(text="int probe(void *ctx) { return 0; }")
            b.load_func("probe", BPF.SOCKET_FILTER)
            b.cleanup()
    except Exception as e:   # BCC raises bare Exception on compile errors
        detail = str(e).splitlines()[0] if str(e) else "compile failed"
        return Check(False, f"BCC could not compile with {h.path} ({detail}): "
                     + headers.install_hint())
    return Check(True, "BCC compiles and loads programs" + ("" if h.own else
                                                           " (with the header tree above)"))


def check_fentry() -> Check:
    try:
        from bcc import BPF
    except ImportError:
        return Check(False, "BCC is missing")
    if not BPF.support_kfunc():
        return Check(False, "BCC reports no fentry support (BTF or trampolines missing)")
    try:
        with quiet_stderr():
            b = BPF(text="KFUNC_PROBE(tcp_v4_connect) { return 0; }")
            b.cleanup()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else "load failed"
        return Check(False, f"fentry program refused by the kernel ({msg})")
    return Check(True, "fentry loads and attaches")


def check_ctnetlink_events() -> Check:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    except OSError as e:
        return Check(False, f"no netfilter netlink: {e.strerror}")
    try:
        s.bind((0, 0))
        s.setsockopt(270, 1, 1)            # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_NEW
    except OSError as e:
        return Check(False, f"cannot subscribe to conntrack events: {e.strerror} "
                     "(modprobe nf_conntrack_netlink; run as root)")
    finally:
        s.close()
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_events") as f:
            if f.read().strip() == "0":
                return Check(False, "conntrack events are off: sysctl -w net.netfilter.nf_conntrack_events=1")
    except OSError:
        pass
    return Check(True, "ctnetlink NEW/DESTROY events")


def check_lockdown() -> Check:
    try:
        with open("/sys/kernel/security/lockdown") as f:
            text = f.read()
    except OSError:
        return Check(True, "no lockdown information (securityfs not mounted): assuming none")
    if "[confidentiality]" in text:
        return Check(False, "lockdown=confidentiality forbids BPF reads of kernel memory")
    return Check(True, f"lockdown {text.strip()}")


def detect(full: bool = True) -> Features:
    """All checks; `full` also tries to compile and load (takes seconds)."""
    mount_tracefs()
    f = Features()
    f.checks["privileges"] = check_privileges()
    f.checks["bpf"] = check_bpf_syscall()
    f.checks["btf"] = check_btf()
    f.checks["tracefs"] = Check(tracefs() is not None, tracefs() or
                                "not mounted: mount -t tracefs nodev /sys/kernel/tracing")
    f.checks["tracepoint_kfree_skb"] = check_tracepoint()
    f.checks["kprobes"] = check_kprobes()
    f.checks["lockdown"] = check_lockdown()
    f.checks["ctnetlink_events"] = check_ctnetlink_events()
    f.checks["headers"] = check_headers()
    if full and f.ok("bpf"):
        f.checks["bcc"] = check_bcc()
        f.checks["fentry"] = check_fentry() if f.ok("bcc") else Check(False, "BCC cannot compile here")
    return f
