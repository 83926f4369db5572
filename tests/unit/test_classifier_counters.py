"""The tracepoint backend's classifier (table_full vs rule, per netns and
CPU, against the kernel's per-CPU drop stat) and the typed Counters."""

from tracer.backends.tracepoint import Classifier
from tracer.events import Counters, SourceCounts


class FakeStats:
    """The kernel's per-CPU `drop` deltas of each namespace, set by the test."""

    def __init__(self):
        self.drop = {}
        self.reads = 0

    def delta(self, netns, key="drop", refresh=True):
        self.reads += 1
        return dict(self.drop.get(netns, {}))


def test_ctless_drops_covered_by_the_kernel_count_are_table_full():
    st = FakeStats()
    c = Classifier(st)
    st.drop[7] = {0: 3}
    assert [c.reason(7, 0, seq, False) for seq in (1, 2, 3)] == ["table_full"] * 3
    # a fourth ct-less drop that the kernel did not count: a raw-table/INVALID rule
    assert c.reason(7, 0, 4, False) == "rule"
    st.drop[7] = {0: 4}
    assert c.reason(7, 0, 5, False) == "table_full"


def test_ct_attached_is_always_a_rule_and_cpus_are_apart():
    st = FakeStats()
    c = Classifier(st)
    st.drop[7] = {0: 1, 1: 0}
    assert c.reason(7, 0, 0, True) == "rule"
    assert c.reason(7, 1, 1, False) == "rule"          # CPU 1's count is 0
    assert c.reason(7, 0, 1, False) == "table_full"


def test_a_gap_of_unseen_events_consumes_the_count():
    """Events over the rate limit are not seen, but their seq numbers are:
    a gap of 3 with a kernel count of 2 means at most 2 were table_full."""
    st = FakeStats()
    c = Classifier(st)
    st.drop[9] = {0: 2}
    assert c.reason(9, 0, 3, False) == "rule"
    st.drop[9] = {0: 3}
    assert c.reason(9, 0, 4, False) == "table_full"


def test_the_kernel_is_read_only_when_needed():
    st = FakeStats()
    c = Classifier(st)
    st.drop[1] = {0: 100}
    c.reason(1, 0, 1, False)
    n = st.reads
    for seq in range(2, 50):
        c.reason(1, 0, seq, False)
    assert st.reads == n


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
