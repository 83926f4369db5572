"""Why a packet was dropped, decided once, here, for every view.

The tracepoint backend sees each netfilter drop (skb:kfree_skb,
NETFILTER_DROP) with two facts from BPF: whether a conntrack entry was
attached, and its number among the drops of its class (with or without an
entry) on its (namespace, CPU). The kernel counts its own refusals per
namespace and CPU, before the packet is freed:

    no entry, counted in `drop` (less `insert_failed`)  conntrack refused it:
        table_full   ... and the table was at its limit (or nothing says otherwise)
        invalid      ... with room in the table, the kernel's `invalid` counter
                     having moved as much (a tracker verdict counts in both)
    an entry, counted in `insert_failed`                 insert_failed: a clash at
                                                         confirm (NAT ports, DNS race)
    the rest                                             rule: a ruleset DROP
    no sequence number (BPF map full)                    unknown

A drop is matched with the kernel's count by its sequence number: the
first n drops of a class on a (namespace, CPU) after tracing started are
conntrack's when the kernel counted n. Totals are exact; per event, a rule
drop and a refusal of the same class on the same CPU between two readings
can swap labels. Sequence gaps (events over the rate limit) consume the
count as the missing events would have.

The kernel side of the kprobe backend decides table_full and insert_failed
itself; its rule drops arrive labelled.
"""

from __future__ import annotations

from tracer.core import counters
from tracer.core.events import INSERT_FAILED, INVALID, RULE, TABLE_FULL, UNKNOWN, no_drops


class Classifier:
    """Reasons of drops, per (namespace key, CPU, class), against counters.

    `kernel(key)` returns {stat: {cpu: count since tracing started}} of the
    kernel's per-CPU stats ("drop", "insert_failed", ...) for a namespace key,
    read once;
    `at_limit(key)` says whether that namespace's table is at its limit
    (True, False, or None when unknown: then a refusal is table_full)."""

    def __init__(self, kernel, at_limit=lambda key: None):
        self.kernel = kernel
        self.at_limit = at_limit
        self.seen: dict[tuple, int] = {}      # (key, cpu, ct) -> last sequence number seen
        self.used: dict[tuple, int] = {}      # (key, cpu, ct) -> kernel count attributed
        self.budget: dict[tuple, int] = {}    # (key, cpu, ct) -> kernel count, last read
        self.totals = no_drops()
        self.invalid: dict = {}               # namespace key -> drops deemed invalid

    def _read(self, key) -> None:
        got = self.kernel(key)
        invalid = got.get("invalid", {})
        for cpu in set().union(*got.values()):
            c = {s: v.get(cpu, 0) for s, v in got.items()}
            self.budget[(key, cpu, True)] = max(c.get("insert_failed", 0), 0)
            self.budget[(key, cpu, False)] = counters.table_full_drops(c)
            self.budget[(key, cpu, "invalid")] = max(invalid.get(cpu, 0), 0)

    def reason(self, key, cpu: int, seq: int, ct_attached: bool) -> str:
        if seq == 0:
            r = UNKNOWN
        else:
            k = (key, cpu, bool(ct_attached))
            gap = seq - self.seen.get(k, 0)
            if gap <= 0:                       # a sequence restarted: the namespace is new
                self.forget(key)
                gap = seq
            used = self.used.get(k, 0)
            if used + gap > self.budget.get(k, 0):
                self._read(key)
            avail = self.budget.get(k, 0) - used
            self.seen[k] = seq
            if avail >= gap:
                self.used[k] = used + gap
                if ct_attached:
                    r = INSERT_FAILED
                else:
                    r = TABLE_FULL
                    ki = (key, cpu, "invalid")
                    if self.at_limit(key) is False and \
                            self.budget.get(ki, 0) - self.used.get(ki, 0) >= gap:
                        r = INVALID
                        self.used[ki] = self.used.get(ki, 0) + gap
                        self.invalid[key] = self.invalid.get(key, 0) + gap
            else:
                self.used[k] = used + max(avail, 0)
                r = RULE
        self.totals[r] += 1
        return r

    def forget(self, key) -> None:
        """Drop the state of a namespace (gone, or its key reused)."""
        for d in (self.seen, self.used, self.budget):
            for k in [k for k in d if k[0] == key]:
                del d[k]
        self.invalid.pop(key, None)
