"""Capture files: writer, tolerant reader, bad input (fuzzed); report and
doctor rules on known states; the HTML report."""

import gzip
import json
import os
import random
import re

import pytest
from tests.clirunner import runner

from tracer.formats.capture import Writer, entries_record, read_capture
from tracer.cli import main
from tracer.core.doctor import HostState, diagnose
from tracer.core.report import analyse
from tracer.views.report import to_html


def make_capture(path, seconds=5, truncate=False):
    state = {"netns": "node", "count": 90, "max": 100, "buckets": 100, "by_state": {"ESTABLISHED": 60},
             "by_proto_dport": {"udp/4789": 3}, "by_src": {"10.0.0.1": 80}, "total": 90,
             "containers": {"10.0.0.1": "web-1"}, "stats": {}, "rates": {}, "sysctls": {}, "rules": ""}
    w = Writer(str(path), {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node",
                           "interval": 1.0, "state": state})
    t0 = 1000.0
    for i in range(seconds + 1):
        w.write({"k": "stats", "t": t0 + i, "count": 90 + i, "max": 100,
                 "kernel": {"drop": 10 * i, "early_drop": i, "insert_failed": 0}})
        for j in range(3):
            w.write({"k": "insert", "t": t0 + i + 0.1 * j, "proto": "udp", "src": "10.0.0.1",
                     "sport": 1000 + j, "dst": "10.0.0.9", "dport": 53, "container": "web-1"})
        w.write({"k": "drop", "t": t0 + i + 0.5, "reason": "table_full", "proto": "udp",
                 "src": "10.0.0.2", "sport": 5, "dst": "10.0.0.9", "dport": 53, "container": None})
    w.write({"k": "end", "t": t0 + seconds, "totals": {}, "sources": {"10.0.0.2": 10 * seconds},
             "state": state})
    w.close()
    return path


def test_round_trip_and_analysis(tmp_path):
    p = make_capture(tmp_path / "c")
    assert oct(os.stat(p).st_mode & 0o777) == "0o600"
    cap = read_capture(str(p))
    assert not cap.truncated and cap.bad_records == 0
    rep = analyse(cap)
    assert rep["totals"]["drops"] == 50 and rep["totals"]["inserts"] == 18
    assert rep["totals"]["early_drops"] == 5
    assert rep["top_sources_by_drops"][0] == {"src": "10.0.0.2", "drops": 50, "container": None}
    assert rep["top_sources_by_inserts"][0]["container"] == "web-1"
    assert [x["drops"] for x in rep["timeline"]] == [10, 10, 10, 10, 10, 0]   # in the second they happened
    ids = {f["id"] for f in rep["findings"]}
    assert {"table_full", "dropping_now", "tracked_vxlan"} <= ids


def test_truncated_capture_is_read_and_said(tmp_path):
    p = make_capture(tmp_path / "c", seconds=50)
    raw = p.read_bytes()
    (tmp_path / "t").write_bytes(raw[: len(raw) // 2])
    cap = read_capture(str(tmp_path / "t"))
    assert cap.truncated and cap.records
    r = runner().invoke(main, ["report", "--json", str(tmp_path / "t")])
    assert r.exit_code == 0 and "truncated" in r.stderr
    json.loads(r.stdout)


@pytest.mark.parametrize("content,msg", [
    (b"", "empty"),
    (b"ipv4 2 tcp 6 1 ESTABLISHED garbage\n", None),     # a text file: report falls back to snapshot
    (gzip.compress(b"not json\n"), "no conntrack entries"),   # a gzip: maybe an export
    (gzip.compress(json.dumps({"format": "cttrace-capture", "version": 99}).encode() + b"\n"), "newer cttrace"),
    (gzip.compress(b"")[:5], "truncated before its header"),
])
def test_bad_captures_are_one_line(tmp_path, content, msg):
    p = tmp_path / "bad"
    p.write_bytes(content)
    r = runner().invoke(main, ["report", str(p)])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("cttrace: error:") and "Traceback" not in r.stderr
    if msg:
        assert msg in lines[-1]


def test_missing_and_directory(tmp_path):
    for arg, msg in ((str(tmp_path / "nope"), "no such file"), (str(tmp_path), "directory")):
        r = runner().invoke(main, ["report", arg])
        assert r.exit_code == 1 and msg in r.stderr


def test_fuzzed_captures_never_crash(tmp_path):
    good = make_capture(tmp_path / "c", seconds=8).read_bytes()
    plain = gzip.decompress(good)
    rnd = random.Random(7)
    cli = runner()
    for i in range(150):
        data = bytearray(rnd.choice((good, gzip.compress(plain))))
        for _ in range(rnd.randint(1, 8)):
            op = rnd.random()
            pos = rnd.randrange(len(data))
            if op < 0.5:
                data[pos] = rnd.randrange(256)
            elif op < 0.8:
                del data[pos:pos + rnd.randint(1, 40)]
            else:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 20)))
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes(data))
        r = cli.invoke(main, ["report", "--json", str(p)])
        assert r.exit_code in (0, 1), (i, r.exception)
        assert r.exception is None or isinstance(r.exception, SystemExit), (i, repr(r.exception))
        if r.exit_code == 1:
            assert r.stderr.strip().splitlines()[-1].startswith("cttrace: error:")


def test_doctor_rules_on_known_states():
    quiet = HostState(count=10, max=1000, buckets=1000, total=10)
    assert diagnose(quiet) == []
    h = HostState(count=990, max=1000, buckets=100, stats={"drop": 5, "insert_failed": 2},
                  rates={"drop": 3.0}, window=1.0, total=1000,
                  by_state={"ESTABLISHED": 700}, sysctls={"tcp_timeout_established": 432000},
                  by_proto_dport={"udp/4789": 40, "udp/6081": 2}, by_src={"10.0.0.1": 600},
                  containers={"10.0.0.1": "web-1"},
                  rules="-A PREROUTING -p udp -m udp --dport 6081 -j CT --notrack")
    found = {f.id: f for f in diagnose(h)}
    assert found["table_full"].severity == "critical"
    assert "nf_conntrack_max=262144" in found["table_full"].fix
    assert found["dropping_now"].severity == "critical"
    assert "insert_failed" in found and "hash_chains" in found and "established_timeout" in found
    assert "tracked_vxlan" in found and "tracked_geneve" not in found
    assert "web-1" in found["heavy_source"].message
    nft = HostState(by_proto_dport={"udp/4789": 5}, total=5,
                    rules="table ip raw {\n chain pre {\n  udp dport 4789 notrack\n }\n}")
    assert "tracked_vxlan" not in {f.id for f in diagnose(nft)}


def test_html_is_self_contained(tmp_path):
    rep = analyse(read_capture(str(make_capture(tmp_path / "c"))))
    page = to_html(rep)
    assert page.count("<svg") == 3 and "<polyline" in page
    assert not re.search(r"<script|https?://", page)


def _cap(path, records, state=None):
    hdr = {"format": "cttrace-capture", "version": 1, "host": "h", "kernel": "k", "backend": "b",
           "netns": "n", "state": state if state is not None else {}}
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in [hdr, *records]).encode() + b"\n"))
    return path


S = lambda t, d, **kw: {"k": "stats", "t": t, "count": 1, "max": 10, "kernel": {"drop": d}, **kw}  # noqa: E731


@pytest.mark.parametrize("records,state", [
    ([{"k": "stats", "t": 1000.0}], None),                                   # no kernel
    ([S(1000.0, 0), {"k": "stats", "t": 1001.0, "kernel": {"drop": "1"}}], None),
    ([S(1000.0, 0), {"k": "insert", "t": 1000.5}], None),                    # no src
    ([S(1000.0, 0), {"k": "insert", "t": 1000.5, "src": ["x"]}], None),
    ([S(1000.0, 0), {"k": "drop", "t": 1000.5, "src": 5}], None),
    ([S(1000.0, 0), S(1001.0, 1, count="x")], None),
    ([S(1000.0, 0), {"k": "lost", "t": 1000.5, "n": "3"}], None),
    ([S(1000.0, 0), {"k": "end", "t": 1001.0, "sources": {"a": "1"}}], None),
    ([S(1000.0, 0), S(1001.0, 1)], ["not", "a", "dict"]),
    ([S(1000.0, 0), S(1001.0, 1)], {"by_state": "x", "max": "100", "rules": 5, "sysctls": [1]}),
    ([S(0.0, 0), S(3e8, 5)], None),                                          # a huge span
    ([S(1005.0, 0), S(1000.0, 3), S(1003.0, 5)], None),                      # out of order
])
def test_hostile_capture_records(tmp_path, records, state):
    p = _cap(tmp_path / "c", records, state)
    for args in (["report"], ["report", "--json"], ["report", "--html", str(tmp_path / "o.html")],
                 ["doctor", "--capture"]):
        r = runner().invoke(main, [*args, str(p)])
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
        assert r.exit_code in (0, 1)


def test_nan_and_deep_nesting_are_bad_records(tmp_path):
    p = tmp_path / "c"
    hdr = json.dumps({"format": "cttrace-capture", "version": 1})
    p.write_bytes(gzip.compress((hdr + '\n{"k":"stats","t":NaN,"kernel":{}}\n' + "[" * 100000 + "\n"
                                 + json.dumps(S(1000.0, 0)) + "\n").encode()))
    cap = read_capture(str(p))
    assert cap.bad_records == 2 and len(cap.records) == 1


def test_counter_reset_is_counted(tmp_path):
    p = _cap(tmp_path / "c", [S(1000.0, 100), S(1001.0, 150), S(1002.0, 10), S(1003.0, 60)])
    rep = analyse(read_capture(str(p)))
    assert rep["totals"]["drops"] == 50 + 10 + 50
    assert sum(x["drops"] for x in rep["timeline"]) == 110


def test_late_names_and_entries_records_together(tmp_path):
    """A capture with both the end record's late names (a container that
    started during it) and entries records (revision 2): the drops' source
    is named, and the entries chart has its points (a loop over the late
    names once clobbered the timeline's length: a TypeError on real captures)."""
    p = tmp_path / "c"
    w = Writer(str(p), {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node",
                        "interval": 1.0, "state": {"netns": "node"}})
    t0 = 1000.0
    for i in range(4):
        w.write({"k": "stats", "t": t0 + i, "count": 10 + i, "max": 100, "kernel": {"drop": i}})
        w.write(entries_record(t0 + i, {"web-1": 5 + i, "10.0.0.7": 2}, 7 + i))
        w.write({"k": "drop", "t": t0 + i + 0.5, "reason": "table_full", "proto": "udp",
                 "src": "10.0.0.2", "sport": 5, "dst": "10.0.0.9", "dport": 53, "container": None})
    w.write({"k": "end", "t": t0 + 3, "totals": {}, "sources": {"10.0.0.2": 3},
             "names": {"10.0.0.2": "late-1"}, "state": {"netns": "node"}})
    w.close()
    rep = analyse(read_capture(str(p)))
    assert rep["top_sources_by_drops"][0] == {"src": "10.0.0.2", "drops": 3, "container": "late-1"}
    e = rep["entries_by_source"]
    assert e is not None and e["keys"][0] == "web-1"


def test_entries_records_stack_by_container_and_stay_escaped(tmp_path):
    """Revision 2's entries records: read back, stacked per name in the
    analysis, drawn as areas; a hostile name stays text; a bad record is skipped."""
    from tracer.formats.capture import REVISION, entries_record
    p = make_capture(tmp_path / "c", seconds=4)
    raw = gzip.decompress(p.read_bytes()).decode().splitlines()
    evil = '<script>alert(1)</script>"'
    extra = [json.dumps(entries_record(1000.0 + i, {"web-1": 80 + i, evil: 5, **{f"n{j}": 1 for j in range(20)}},
                                       105 + i)) for i in range(5)]
    extra.append(json.dumps({"k": "entries", "t": 1002.5, "by": {"x": "many"}}))
    (tmp_path / "r2").write_bytes(gzip.compress(("\n".join(raw[:1] + extra + raw[1:]) + "\n").encode()))
    cap = read_capture(str(tmp_path / "r2"))
    assert cap.bad_records == 1 and cap.header["revision"] == REVISION
    mix = analyse(cap)["entries_by_source"]
    assert mix["keys"][:2] == ["web-1", evil] and mix["keys"][-1] == "other"
    assert [p["by"]["web-1"] for p in mix["points"]] == [80, 81, 82, 83, 84]
    assert all(p["by"]["other"] == 10 and p["total"] == sum(p["by"].values()) for p in mix["points"])
    page = to_html(analyse(cap))
    assert page.count("<svg") == 4 and page.count('class="area"') == len(mix["keys"])
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in page


def test_a_burst_between_two_samples_is_table_full(tmp_path):
    """The limit was lowered for half a second between two samples (as an
    operator's test or a short spike does): no sample saw the table above
    50%, but the kernel refused 30 new entries as table-full, so the report
    says the table was full (critical), not "drops with room in the table"."""
    def cap(path, reason):
        state = {"netns": "node", "count": 50, "max": 100, "total": 50}
        w = Writer(str(path), {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node",
                               "interval": 1.0, "state": state})
        for i in range(4):
            w.write({"k": "stats", "t": 1000.0 + i, "count": 50, "max": 100,
                     "kernel": {"drop": 0 if i < 2 else 30, "insert_failed": 0, "early_drop": 0}})
        for j in range(30):
            w.write({"k": "drop", "t": 1001.4 + j / 100, "reason": reason, "proto": "udp",
                     "src": "10.0.0.2", "sport": 4000 + j, "dst": "10.0.0.9", "dport": 53})
        w.write({"k": "end", "t": 1003.0, "totals": {}, "sources": {}, "state": state})
        w.close()
        return read_capture(str(path))
    rep = analyse(cap(tmp_path / "full", "table_full"))
    f = {x["id"]: x for x in rep["findings"]}
    assert f["dropping_now"]["severity"] == "critical" and "conntrack_drops" not in f
    assert "refused with the table 100% full" in f["dropping_now"]["evidence"]
    # the same counters with invalid-verdict drop events: room in the table, said so
    rep = analyse(cap(tmp_path / "inv", "invalid"))
    f = {x["id"]: x for x in rep["findings"]}
    assert "dropping_now" not in f and f["conntrack_drops"]["severity"] == "warning"


def test_a_point_shows_its_fullest_sample_and_carries_its_last(tmp_path):
    """Samples every 5 s and a burst's extra sample: the burst's point shows
    the table at its limit; the points after it, until the next sample,
    show the table as it was last sampled (recovered), not the burst."""
    w = Writer(str(tmp_path / "c"), {"host": "h", "kernel": "k", "backend": "tracepoint", "netns": "node",
                                     "interval": 5.0, "state": {"count": 40, "max": 1000}})
    for t, count, mx in ((1000.0, 40, 1000), (1005.2, 120, 120), (1005.8, 40, 1000), (1010.0, 40, 1000)):
        w.write({"k": "stats", "t": t, "count": count, "max": mx, "kernel": {"drop": 0}})
    w.close()
    tl = analyse(read_capture(str(tmp_path / "c")))["timeline"]
    assert [(x["t"], x["count"], x["max"]) for x in tl] == \
        [(s, 40, 1000) for s in range(5)] + [(5, 120, 120)] + [(s, 40, 1000) for s in range(6, 11)]
