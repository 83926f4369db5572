"""One formula per quantity (tracer/core/counters.py) and one kernel-version
parser (tracer/core/kversion.py), a case each."""

from tracer.core import counters, kversion
from tracer.core.counters import Accumulator, WRAP


def test_clash_drops_are_insert_failed_less_chaintoolong():
    # nf_ct_resolve_clash()'s drop: drop +1 and insert_failed +1
    assert counters.clash_drops({"drop": 4, "insert_failed": 4}) == 4
    # __nf_conntrack_confirm()'s chaintoolong: insert_failed +1, chaintoolong +1, no drop
    assert counters.clash_drops({"insert_failed": 10, "chaintoolong": 3}) == 7
    assert counters.clash_drops({"insert_failed": 3, "chaintoolong": 3}) == 0


def test_table_full_is_drop_less_clash_drops():
    assert counters.table_full_drops({"drop": 20}) == 20                     # only refusals
    assert counters.table_full_drops({"drop": 20, "insert_failed": 10}) == 10  # 10 clashes in drop
    # 3 of the 10 failed inserts are chains too long: not in drop
    assert counters.table_full_drops({"drop": 20, "insert_failed": 10, "chaintoolong": 3}) == 13
    # a kernel before 5.16 has no chaintoolong column: counted as 0
    assert counters.table_full_drops({"drop": 5, "insert_failed": 9}) == 0     # never negative
    assert counters.with_table_full({"drop": 7, "insert_failed": 2}) == \
        {"drop": 7, "insert_failed": 2, "table_full": 5}


def test_increase_plain_wrap_and_reset():
    assert counters.increase(10, 15) == 5
    assert counters.increase(5, 5) == 0
    assert counters.increase(WRAP - 16, 0x10) == 0x20          # one CPU's 32-bit counter wrapped
    assert counters.increase(1_000_000, 12) == 12              # a new namespace: from zero
    # sums over CPUs: two CPUs wrapping lower the sum by 2 * 2**32
    old = 3 * WRAP - 100
    assert counters.increase(old, old + 250 - 2 * WRAP) == 250


def test_deltas_per_cpu_and_summed():
    a = [{"cpu": 0, "drop": WRAP - 1, "insert": 5}, {"cpu": 1, "drop": 3, "insert": 1}]
    b = [{"cpu": 0, "drop": 4, "insert": 9}, {"cpu": 1, "drop": 3, "insert": 2},
         {"cpu": 2, "drop": 1}]                                   # CPU 2 first seen: from zero
    assert counters.row_deltas(a, b) == {"drop": 5 + 0 + 1, "insert": 4 + 1}
    assert counters.summed(b) == {"drop": 8, "insert": 11}
    # the same readings summed first give the same increase (the wrap removed)
    assert counters.deltas(counters.summed(a), counters.summed(b[:2]))["drop"] == 5


def test_series_deltas_over_a_capture():
    readings = [{"drop": 10}, {"drop": 15}, {"drop": 2}, {"drop": 7}]  # a reset after 15
    assert counters.series_deltas(readings) == {"drop": 5 + 2 + 5}
    assert counters.series_deltas([{"drop": 1}]) == {}


def test_accumulator_baseline_and_late_counters():
    acc = Accumulator([{"cpu": 0, "drop": 100}])
    acc.add([{"cpu": 0, "drop": 104}, {"cpu": 1, "drop": 6}])     # CPU 1 born after the start
    assert acc.per_cpu("drop") == {0: 4, 1: 6}
    assert acc.by_stat() == {"drop": {0: 4, 1: 6}} and acc.totals() == {"drop": 10}


def test_accumulator_readings_added_out_of_order():
    """Two readers read the kernel, then add under a lock in the other
    order (serve's scrapers and pump): the older reading adds nothing.
    Before: it counted as a reset and added the counter's whole value
    (211 here; 117,471 against the kernel's 54,790 in a 1-minute soak)."""
    acc = Accumulator()
    acc.add([{"cpu": 0, "drop": 100}])
    old = [{"cpu": 0, "drop": 100}]                               # reader A reads ...
    acc.add([{"cpu": 0, "drop": 105}])                            # ... B reads later, adds first
    acc.add(old)                                                  # A adds its older reading
    assert acc.totals() == {"drop": 105}
    acc.add([{"cpu": 0, "drop": 106}])
    assert acc.totals() == {"drop": 106} and acc.per_cpu("drop") == {0: 106}


def test_accumulator_older_reading_across_a_wrap():
    acc = Accumulator([{"cpu": 1, "drop": WRAP - 10}])
    acc.add([{"cpu": 1, "drop": 5}])                              # wrapped: +15
    acc.add([{"cpu": 1, "drop": WRAP - 3}])                       # read before the wrap, added after it
    assert acc.totals() == {"drop": 15}
    acc.add([{"cpu": 1, "drop": 9}])
    assert acc.totals() == {"drop": 19}


def test_kernel_version_parser():
    assert kversion.parse("6.1.0-28-amd64") == (6, 1, 0)
    assert kversion.parse("6.12.9+bpo-amd64") == (6, 12, 9)
    assert kversion.parse("5.10") == (5, 10, 0)
    assert kversion.parse("linux-headers-6.1.0-27-common") == (6, 1, 0)
    assert kversion.parse("6.18.0-rc3") == (6, 18, 0)
    assert kversion.parse("") is None and kversion.parse(None) is None and kversion.parse("x") is None
    v = kversion.parse("6.1.0")
    assert v.at_least(6, 1) and not v.at_least(6, 2) and v >= (5, 6)
    assert not kversion.parse("5.10.0").at_least(6, 1)
