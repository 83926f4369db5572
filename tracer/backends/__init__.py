"""Backends: one module per way of seeing conntrack, same protocol
(start, poll, counters, close). choose() picks one from the features."""

from __future__ import annotations


def choose(features) -> tuple[str | None, str]:
    """(backend name or None, why)."""
    if features.ok("kprobes") and features.ok("bcc"):
        return "tracepoint", ("kprobes exist, but the full-kernel backend is not built yet; "
                              "using the tracepoint backend")
    missing = [n for n in ("privileges", "bpf", "btf", "tracefs", "tracepoint_kfree_skb")
               if not features.ok(n)]
    if missing:
        first = features.checks[missing[0]]
        return None, f"no backend can run: {missing[0]}: {first.detail}"
    return "tracepoint", "no kprobes/fentry here: skb:kfree_skb + ctnetlink events + stats"
