"""Backends: one module per way of seeing conntrack, one protocol.

    start() -> self            load and attach (BackendError if it cannot)
    poll(timeout_ms) -> [Drop] drop events taken in (reasons decided)
    counters() -> Counters     exact in-kernel totals, per source, losses
    forget_sources(netns, srcs) bound the per-source maps on long runs
    close()                    detach; also on __exit__
    name, blind_spots          shown to the user

choose() picks one from the detected features; make() builds it.
"""

from __future__ import annotations

# The backends this build offers, best first. fentry is not among them:
# see tracer/backends/kprobe.py (fentry_status) for why.
NAMES = ("kprobe", "tracepoint")


class BackendError(Exception):
    """The backend cannot run here; the message names what is missing and the fix."""


def choose(features, forced: str = "auto") -> tuple[str | None, str]:
    """(backend name or None, why) for the detected features."""
    from tracer.backends.kprobe import PROBES, fentry_status, probeable
    if forced == "tracepoint":
        return "tracepoint", "forced"
    kprobes_ok = features.ok("kprobes") and features.ok("bcc") if "bcc" in features.checks \
        else features.ok("kprobes")
    if kprobes_ok:
        have = probeable()
        need = [f for f, _, _, req in PROBES if req and f not in have]
        if not need:
            ok, why = fentry_status()
            return "kprobe", f"kprobes on conntrack's functions (fentry not used: {why})"
        if forced == "kprobe":
            return None, f"kprobe cannot run here: cannot probe {', '.join(need)}"
    elif forced == "kprobe":
        return None, f"kprobe cannot run here: {features.checks['kprobes'].detail}"
    missing = [n for n in ("privileges", "bpf", "btf", "tracefs", "tracepoint_kfree_skb")
               if not features.ok(n)]
    if missing:
        first = features.checks[missing[0]]
        return None, f"no backend can run: {missing[0]}: {first.detail}"
    return "tracepoint", ("no usable kprobes here (" + features.checks["kprobes"].detail +
                          "): skb:kfree_skb + ctnetlink events + stats")


def make(name: str, rate: int):
    if name == "kprobe":
        from tracer.backends.kprobe import KprobeBackend
        return KprobeBackend(rate=rate)
    if name == "tracepoint":
        from tracer.backends.tracepoint import TracepointBackend
        return TracepointBackend(rate=rate)
    raise ValueError(f"unknown backend {name!r}")
