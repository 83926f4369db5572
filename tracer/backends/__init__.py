"""Backends: one module per way of seeing conntrack, one protocol.

    start() -> self            load and attach (BackendError if it cannot)
    poll(timeout_ms) -> [Drop] drop events taken in (reasons decided)
    counters() -> Counters     exact in-kernel totals, per source, losses
    forget_sources(netns, srcs) -> {src: drops}  bound the per-source maps on long
                               runs; each source's drops as read at its delete
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
    """(backend name or None, why) for the detected features: the same facts
    `cttrace features` prints, so it never promises a backend that cannot
    start. Both backends need BCC (a header tree to compile with) and BTF;
    kprobe needs conntrack's functions probeable and uses skb:kfree_skb for
    rule drops when it can; tracepoint needs skb:kfree_skb."""
    from tracer.backends.kprobe import fentry_status   # here: kprobe imports this module
    c = features.checks
    for n in ("privileges", "bpf", "btf", "tracefs", "headers", "bcc"):
        if n in c and not c[n].ok:
            return None, f"no backend can run: {n}: {c[n].detail}"
    tp = features.ok("tracepoint_kfree_skb")
    tp_detail = c["tracepoint_kfree_skb"].detail if "tracepoint_kfree_skb" in c else "not checked"
    if forced in ("auto", "kprobe") and features.ok("kprobes"):
        _, why = fentry_status()
        rules = "" if tp else f"; rule drops not seen: {tp_detail}"
        return "kprobe", f"kprobes on conntrack's functions (fentry not used: {why}){rules}"
    kp_detail = c["kprobes"].detail if "kprobes" in c else "not checked"
    if forced == "kprobe":
        return None, f"kprobe cannot run here: {kp_detail}"
    if not tp:
        return None, f"no backend can run: tracepoint_kfree_skb: {tp_detail}; kprobes: {kp_detail}"
    if forced == "tracepoint":
        return "tracepoint", "forced"
    return "tracepoint", (f"no kprobes on conntrack's functions here ({kp_detail}): "
                          "skb:kfree_skb + ctnetlink events + stats")


def make(name: str, rate: int):
    # the backends import this module (BackendError): imported here, not at the top
    if name == "kprobe":
        from tracer.backends.kprobe import KprobeBackend
        return KprobeBackend(rate=rate)
    if name == "tracepoint":
        from tracer.backends.tracepoint import TracepointBackend
        return TracepointBackend(rate=rate)
    raise ValueError(f"unknown backend {name!r}")
