from tracer.kernel.stats import parse_stat_file

STAT = """entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0000000c  00000000 00000003 00000000 00000001 00000000 00000000 00000000 00000000 00000000 000000eb 00000002 00000000  00000000 00000000 00000000 00000000
0000000c  00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000004 00000010 00000000 00000002  00000000 00000000 00000000 00000000
"""


def test_stat_file_rows_and_names():
    rows = parse_stat_file(STAT)
    assert len(rows) == 2
    assert rows[0]["drop"] == 0xeb and rows[0]["early_drop"] == 2 and rows[0]["found"] == 3
    assert rows[1]["insert_failed"] == 4 and rows[1]["clash_resolve"] == 1 and rows[1]["error"] == 2
    assert "entries" not in rows[0] and rows[1]["cpu"] == 1
