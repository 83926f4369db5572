"""What this kernel and this BCC can do, found by trying the real thing.

`cttrace features` prints the result; backends use it to choose and to
explain what they cannot see. Each check says how it was decided and, when
negative, what is missing and how to fix it.

Kernel history worth knowing: skb:kfree_skb carries a drop reason since
Linux 5.17 (NETFILTER_DROP since 5.19-ish backports vary: read from BTF);
BTF in /sys/kernel/btf/vmlinux needs CONFIG_DEBUG_INFO_BTF (5.4+);
fentry/fexit need BPF trampolines (5.5+, x86); ctnetlink events need
nf_conntrack_netlink (and nf_conntrack_events not 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import socket
import struct
from dataclasses import asdict, dataclass, field

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
    from tracer.btf import BTF, BTFError
    try:
        b = BTF.load()
        b.offset("sk_buff", "_nfct")
        return Check(True, "/sys/kernel/btf/vmlinux")
    except BTFError as e:
        return Check(False, f"{e} (kernel built without CONFIG_DEBUG_INFO_BTF)")


def check_tracepoint() -> Check:
    tf = tracefs()
    if tf is None:
        return Check(False, "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")
    fmt = os.path.join(tf, "events/skb/kfree_skb/format")
    try:
        with open(fmt) as f:
            text = f.read()
    except OSError:
        return Check(False, "no tracepoint skb:kfree_skb in this kernel")
    if "reason" not in text:
        return Check(False, "skb:kfree_skb has no drop reason (Linux 5.17+ needed)")
    if "NETFILTER_DROP" not in text:
        return Check(False, "skb:kfree_skb has no NETFILTER_DROP reason in this kernel")
    return Check(True, "skb:kfree_skb with reason NETFILTER_DROP")


def check_kprobes() -> Check:
    if not os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        tf = tracefs()
        if not (tf and os.path.exists(os.path.join(tf, "kprobe_events"))):
            return Check(False, "no kprobe support (kernel built without CONFIG_KPROBES)")
    tf = tracefs()
    funcs = os.path.join(tf, "available_filter_functions") if tf else ""
    try:
        with open(funcs) as f:
            have = any(line.split()[0] == "__nf_conntrack_alloc" for line in f if line.strip())
    except OSError:
        have = False
    if not have:
        return Check(False, "kprobes exist but __nf_conntrack_alloc is not probeable "
                     "(nf_conntrack not loaded, or inlined)")
    return Check(True, "kprobe PMU; __nf_conntrack_alloc probeable")


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level writes to fd 2 (libbpf/BCC print there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_bcc() -> Check:
    """Can BCC compile and load a program here (kernel headers usable)?"""
    try:
        from bcc import BPF  # noqa: F401
    except ImportError:
        return Check(False, "BCC is missing: apt-get install python3-bpfcc (system Python)")
    try:
        with quiet_stderr():
            b = BPF(text="int probe(void *ctx) { return 0; }")
            b.load_func("probe", BPF.SOCKET_FILTER)
            b.cleanup()
    except Exception as e:   # BCC raises bare Exception on compile errors
        detail = str(e).splitlines()[0] if str(e) else "compile failed"
        if "headers" in detail:
            detail = ("no kernel headers for BCC: install linux-headers-$(uname -r), "
                      "or run scripts/setup (links Debian's headers)")
        return Check(False, detail)
    return Check(True, "BCC compiles and loads programs")


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
    if full and f.ok("bpf"):
        f.checks["bcc"] = check_bcc()
        f.checks["fentry"] = check_fentry() if f.ok("bcc") else Check(False, "BCC cannot compile here")
    return f
