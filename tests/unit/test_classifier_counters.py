"""Drop reasons (tracer/core/classify.py) against the kernel's per-CPU counters,
the wrap-safe accumulation of those 32-bit counters, and the typed Counters."""

from tracer.core.counters import Accumulator
from tracer.core.classify import Classifier
from tracer.core.events import Counters, SourceCounts

NS = (77, 4026532000)          # (cookie, inode)


class FakeKernel:
    """The kernel's per-CPU counts since start of each namespace, set by the test."""

    def __init__(self):
        self.c = {}
        self.full = {}
        self.reads = 0

    def set(self, key, stat, cpu, n):
        self.c.setdefault(key, {}).setdefault(stat, {})[cpu] = n

    def __call__(self, key):
        self.reads += 1
        return {s: dict(v) for s, v in self.c.get(key, {}).items()}

    def at_limit(self, key):
        return self.full.get(key)


def test_ctless_drops_covered_by_drop_are_table_full_the_rest_rule():
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    k.set(NS, "drop", 0, 3)
    assert [c.reason(NS, 0, seq, False) for seq in (1, 2, 3)] == ["table_full"] * 3
    assert c.reason(NS, 0, 4, False) == "rule"        # not counted: a raw/INVALID rule
    k.set(NS, "drop", 0, 4)
    assert c.reason(NS, 0, 5, False) == "table_full"
    assert c.totals["table_full"] == 4 and c.totals["rule"] == 1


def test_clash_drops_count_in_drop_and_insert_failed():
    """A clash at confirm: the kernel counts it in both `drop` and
    `insert_failed`, and the packet carries its (unconfirmed) entry."""
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    k.set(NS, "drop", 0, 2)
    k.set(NS, "insert_failed", 0, 2)
    assert c.reason(NS, 0, 1, True) == "insert_failed"
    assert c.reason(NS, 0, 1, False) == "rule"         # drop - insert_failed = 0 refusals
    assert c.reason(NS, 0, 2, True) == "insert_failed"
    assert c.reason(NS, 0, 3, True) == "rule"          # a filter rule on a new flow


def test_refusal_with_room_in_the_table_is_invalid():
    """A tracker's verdict counts in `drop` and `invalid`; a refusal counted
    in `drop` alone is table_full even when the table has room by the time
    it is read (the limit raised again right after, as tests do)."""
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    k.set(NS, "drop", 1, 3)
    k.set(NS, "invalid", 1, 1)
    k.full[NS] = False
    assert c.reason(NS, 1, 1, False) == "invalid"
    assert c.reason(NS, 1, 2, False) == "table_full"     # `invalid` moved once only
    k.full[NS] = True
    k.set(NS, "invalid", 1, 2)
    assert c.reason(NS, 1, 3, False) == "table_full"     # at the limit: table full


def test_cpus_namespaces_and_unknown_are_apart():
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    other = (78, 4026532000)                           # the same inode, reused: another key
    k.set(NS, "drop", 0, 1)
    assert c.reason(NS, 1, 1, False) == "rule"         # CPU 1 counted nothing
    assert c.reason(other, 0, 1, False) == "rule"
    assert c.reason(NS, 0, 1, False) == "table_full"
    assert c.reason(NS, 0, 0, False) == "unknown"      # no sequence number (map full)


def test_a_gap_of_unseen_events_consumes_the_count():
    """Events over the rate limit are not seen, their sequence numbers are."""
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    k.set(NS, "drop", 0, 2)
    assert c.reason(NS, 0, 3, False) == "rule"
    k.set(NS, "drop", 0, 3)
    assert c.reason(NS, 0, 4, False) == "table_full"


def test_a_restarted_sequence_starts_the_namespace_over():
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    k.set(NS, "drop", 0, 5)
    for seq in range(1, 6):
        c.reason(NS, 0, seq, False)
    k.set(NS, "drop", 0, 1)                            # a new namespace, same key
    assert c.reason(NS, 0, 1, False) == "table_full"


def test_the_kernel_is_read_only_when_needed():
    k = FakeKernel()
    c = Classifier(k, k.at_limit)
    k.set(NS, "drop", 0, 100)
    c.reason(NS, 0, 1, False)
    n = k.reads
    for seq in range(2, 50):
        c.reason(NS, 0, seq, False)
    assert k.reads == n


def test_32_bit_counters_wrap_without_a_reset():
    acc = Accumulator()
    acc.add([{"cpu": 0, "drop": 0xFFFFFFF0}, {"cpu": 1, "drop": 5}])
    assert acc.per_cpu("drop") == {0: 0xFFFFFFF0, 1: 5}
    acc.add([{"cpu": 0, "drop": 0x10}, {"cpu": 1, "drop": 7}])     # CPU 0 wrapped
    assert acc.per_cpu("drop") == {0: 0xFFFFFFF0 + 0x20, 1: 7}
    assert acc.totals() == {"drop": 0xFFFFFFF0 + 0x20 + 7}


def test_counters_drops_by_source_and_namespace():
    c = Counters(backend="kprobe", sources=[
        SourceCounts(1, "10.0.0.1", table_full=5, insert_failed=2, inserts=9),
        SourceCounts(1, "10.0.0.2", rule=1),
        SourceCounts(2, "10.0.0.1", netfilter=4),
        SourceCounts(1, "10.0.0.3", inserts=4),          # no drops: not listed
    ])
    assert c.drops_by_src(1) == {"10.0.0.1": 7, "10.0.0.2": 1}
    assert c.drops_by_src(2) == {"10.0.0.1": 4}
    d = c.to_dict()
    assert d["backend"] == "kprobe" and d["missed"] is None and len(d["sources"]) == 4
