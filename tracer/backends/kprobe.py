"""The full-kernel backend: kprobes on conntrack's own functions
(bpf/conntrack_kprobe.c), plus skb:kfree_skb for the drops rules make.

Sees every table-full refusal with its tuple, every insert, insert failure,
delete and early drop, exactly. Needs CONFIG_KPROBES and the functions
__nf_conntrack_alloc, __nf_conntrack_confirm, nf_ct_delete (early drops
are the deletes made inside __nf_conntrack_alloc: early_drop() itself is
static and inlined on some kernels, e.g. Debian's 5.10).

fentry/fexit would cost less per call, but BCC 0.26 (Debian 12) looks
fentry targets up in vmlinux BTF only, so it cannot attach to functions of
a module such as nf_conntrack (measured: ENOENT); fentry_status() says
whether fentry could be used and why not.
"""

from __future__ import annotations

import ctypes as ct
import os
import re

from tracer.backends import BackendError
from tracer.core import kversion
from tracer.backends.tracepoint import TracepointBackend, bpf_source, cflags, ct_tuple_consts, load_btf
from tracer.backends import abi
from tracer.core.events import Counters, SourceCounts, addr, no_drops
from tracer.kernel import features
from tracer.kernel.features import probeable  # noqa: F401  (choose() imports it from here)

NAME = "kprobe"
BLIND_SPOTS = "none for conntrack itself; drops by rules via skb:kfree_skb"
BLIND_SPOTS_LOCATION = ("none for conntrack itself; drops by rules via skb:kfree_skb called from "
                        "nf_hook_slow (no drop reasons before Linux 5.17)")
BLIND_SPOTS_NO_RULES = ("drops by rules are not seen (skb:kfree_skb has neither a drop reason "
                        "nor a usable call site here); conntrack's own events are exact")
PROBES = [  # (function, entry handler, return handler, required)
    # ctnetlink's creates (conntrack -I, conntrackd) refused by a full table
    # are no packet's drop: without this probe they count as table_full
    ("nf_conntrack_alloc", "create_entry", None, False),
    ("__nf_conntrack_alloc", "alloc_entry", "alloc_return", True),
    ("__nf_conntrack_confirm", "confirm_entry", "confirm_return", True),
    ("nf_ct_delete", "delete_entry", "delete_return", True),
]


def fentry_status() -> tuple[bool, str]:
    """(usable, why) for fentry on conntrack's functions. No fentry backend is
    built: this names the first thing that stands in the way here."""
    try:            # BCC here, not at the top: slow to load, needed only to trace
        from bcc import BPF
        import bcc
    except ImportError:
        return False, "BCC is missing"
    if not BPF.support_kfunc():
        return False, "this kernel or BCC has no fentry support (BTF trampolines)"
    try:
        vmlinux = load_btf()
    except BackendError as e:
        return False, str(e)
    if vmlinux.has_func("__nf_conntrack_alloc"):
        return False, ("nf_conntrack is built in, but no fentry program is built: "
                       "kprobes cover the same functions")
    if not os.path.exists("/sys/module/nf_conntrack"):
        return False, "nf_conntrack is not loaded (modprobe nf_conntrack)"
    if not os.path.exists("/sys/kernel/btf/nf_conntrack"):
        return False, ("nf_conntrack is a module and this kernel has no module BTF "
                       "(CONFIG_DEBUG_INFO_BTF_MODULES off, or before Linux 5.11): fentry "
                       "cannot name its functions")
    version = tuple(int(x) for x in bcc.__version__.split(".")[:2] if x.isdigit())
    if version < (0, 28):
        return False, (f"nf_conntrack is a module and BCC {bcc.__version__} looks fentry "
                       "targets up in vmlinux BTF only (module functions: ENOENT)")
    return False, "no fentry program is built yet; kprobes cover the same functions"


def clean_stale_probes() -> int:
    """Remove kprobe_events entries of BCC processes that no longer exist
    (kernels or BCC versions that use the text interface leave them behind
    when a tracer is killed). Returns how many were removed."""
    path = os.path.join(features.tracefs() or "/sys/kernel/tracing", "kprobe_events")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    removed = 0
    for line in lines:
        event = line.split()[0].split(":", 1)[-1] if line.strip() else ""
        m = re.search(r"_bcc_(\d+)$", event)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            try:
                with open(path, "a") as f:
                    f.write(f"-:{event}\n")
                removed += 1
            except OSError:
                pass
    return removed


EARLY_DROPS_UNSEEN = ("early drops are the kernel's counter only: on this kernel the "
                      "nf_ct_delete() calls of early_drop() are inlined, out of the probes' sight")


def early_drops_seen() -> bool:
    """Measured in the VM stage: on Debian's 6.1 and 6.12 every eviction goes
    through the probed nf_ct_delete(); on 5.10 none does (inlined into
    early_drop_list; 0 seen, 7 counted), although early_drop itself is
    probeable. Nothing in available_filter_functions tells the two apart,
    so kernels before 6.1 are said not to show them (the safe side)."""
    v = kversion.parse(os.uname().release)
    return v is not None and v.at_least(6, 1)


class KprobeBackend(TracepointBackend):
    name = NAME
    blind_spots = BLIND_SPOTS
    needs_tracepoint = False      # without it: no rule drops (CT_NO_RULE_HALF), said in blind_spots

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.attached: list[str] = []
        self.missing: list[str] = []
        self.cleaned = 0

    def program(self) -> tuple[str, list[str]]:
        btf = load_btf("nf_conntrack")
        if not ct_tuple_consts(btf):    # cflags() passes them (struct nf_conn, its status bits)
            raise BackendError("this kernel's BTF does not describe struct nf_conn and its status "
                               "bits (nf_conntrack's module BTF): the conntrack probes need them")
        return bpf_source("conntrack_kprobe.c"), cflags(btf, self.rate, self.burst, self.ring_pages())

    def start(self) -> "KprobeBackend":
        k = features.check_kprobes()
        if not k.ok:
            raise BackendError(k.detail)
        how = features.drop_filter()
        self.blind_spots = (BLIND_SPOTS_NO_RULES if how is None else
                            BLIND_SPOTS_LOCATION if how[0] == "location" else BLIND_SPOTS)
        if not early_drops_seen():
            self.blind_spots += "; " + EARLY_DROPS_UNSEEN
        self.cleaned = clean_stale_probes()
        return super().start()

    def _attach(self) -> None:
        have = probeable()
        for func, entry, ret, required in PROBES:
            if func not in have:
                self.missing.append(func)
                continue
            try:
                if entry:
                    self.bpf.attach_kprobe(event=func, fn_name=entry)
                # no maxactive: with it BCC falls back to the kprobe_events
                # text interface, whose entries outlive a SIGKILLed process;
                # the perf kprobe PMU goes away with our file descriptors.
                if ret:
                    self.bpf.attach_kretprobe(event=func, fn_name=ret)
                self.attached.append(func)
            except Exception as e:
                if required:
                    raise BackendError(f"cannot attach to {func}: {e}") from None
                self.missing.append(func)

    def counters(self) -> Counters:
        c = super().counters()
        st = self.bpf["ct_stats"]
        ctt = {name: sum(st[ct.c_int(i)]) for i, name in enumerate(abi.CT_STATS)}
        by = {(s.netns, s.src): s for s in c.sources}
        for s in by.values():          # conntrack's own drops never reach this half:
            s.rule += s.netfilter      # every netfilter drop counted here is a rule's
            s.netfilter = 0
        full: dict[int, int] = {}
        for k, v in self.bpf["ct_sources"].items():
            src = addr(k.family, k.addr)
            s = by.get((k.netns, src))
            if s is None:
                s = by[(k.netns, src)] = SourceCounts(k.netns, src, self._family(k.family))
            s.inserts, s.deletes = v.inserts, v.deletes
            s.table_full, s.insert_failed = v.table_full, v.insert_failed
            if v.table_full:
                full[k.netns] = full.get(k.netns, 0) + v.table_full
        c.sources = list(by.values())
        c.table_full = full
        # conntrack's own refusals come from its probes; every drop the
        # kfree_skb half still sees is a rule's (a tracker's drop too: rare)
        c.by_reason = {"table_full": ctt["table_full"], "insert_failed": ctt["insert_failed"],
                       "invalid": 0, "rule": c.netfilter_drops, "unknown": 0}
        c.reasons_by_netns = {}
        for s in c.sources:
            r = c.reasons_by_netns.setdefault(s.netns, no_drops())
            r["table_full"] += s.table_full
            r["insert_failed"] += s.insert_failed
            r["rule"] += s.rule
        for netns, gone in self.forgotten.items():      # sources forgotten (forget_sources) still count
            if any(gone.values()):
                r = c.reasons_by_netns.setdefault(netns, no_drops())
                r["table_full"] += gone["table_full"]
                r["insert_failed"] += gone["insert_failed"]
                r["rule"] += gone["netfilter"]
                if gone["table_full"]:
                    full[netns] = full.get(netns, 0) + gone["table_full"]
        c.conntrack = ctt
        c.events_sent += ctt["emitted"]
        c.over_rate_limit += ctt["sampled_out"]
        c.lost += ctt["submit_failed"]         # the ring had no room (both halves share it)
        c.keys_full += ctt["keys_full"]
        # kretprobe misses: perf-PMU kprobes do not appear in kprobe_profile,
        # and BCC 0.26 gives no other way to read them here: unknown.
        c.missed = None
        c.attached = ["skb:kfree_skb", *self.attached]
        c.not_attached = list(self.missing)
        return c

