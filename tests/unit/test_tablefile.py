"""The table-export reader: every format, both parsers, bad input."""

import gzip
import io
from pathlib import Path

import pytest

from tests.lab import KNOWN
from tracer.formats import export as tablefile
from tracer.core.filters import Filter
from tracer.core.snapshot import Summary
from tracer.formats.export import FAST, InputError, TextDecoder, parse_line, scan

DATA = Path(__file__).parent.parent / "data"
SAMPLES = sorted(p for p in DATA.iterdir() if p.name.startswith("known-"))

# Lines in the exact shapes the kernel (net/netfilter/nf_conntrack_standalone.c
# ct_seq_show) and conntrack-tools print for cases the test lab cannot make
# on every kernel: SCTP and DCCP states, GRE keys, an unknown protocol,
# offloaded entries (no timeout), directional zones, labels, tabs.
EXTRA_LINES = [
    ("ipv4     2 sctp     132 208 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=5000 dport=38412 "
     "src=10.0.0.2 dst=10.0.0.1 sport=38412 dport=5000 [ASSURED] mark=0 zone=0 use=2",
     dict(proto="sctp", state="ESTABLISHED", src="10.0.0.1", dst="10.0.0.2", dport=38412, flags={"ASSURED"})),
    ("ipv4     2 dccp     33 40 REQUEST src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=5001 [UNREPLIED] "
     "src=10.0.0.2 dst=10.0.0.1 sport=5001 dport=1000 mark=0 zone=0 use=2",
     dict(proto="dccp", state="REQUEST", dport=5001, flags={"UNREPLIED"})),
    ("ipv4     2 gre      47 179 timeout=180, stream_timeout=18000 src=10.0.0.1 dst=10.0.0.2 srckey=0x0 dstkey=0x0 "
     "src=10.0.0.2 dst=10.0.0.1 srckey=0x0 dstkey=0x0 [ASSURED] mark=0 zone=0 use=2",
     dict(proto="gre", dport=None, flags={"ASSURED"})),
    ("ipv4     2 gre      47 179 src=10.0.0.1 dst=10.0.0.2 srckey=0x0 dstkey=0x0 "
     "src=10.0.0.2 dst=10.0.0.1 srckey=0x0 dstkey=0x0 [ASSURED] mark=0 zone=0 use=2",
     dict(proto="gre", dport=None, flags={"ASSURED"})),
    ("ipv4     2 unknown  50 587 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 [ASSURED] mark=0 zone=0 use=2",
     dict(proto="50", src="10.0.0.1", dport=None)),
    ("unknown  50 587 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 mark=0 use=1",
     dict(proto="50", dport=None, flags=set())),
    ("ipv4     2 tcp      6 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=443 "
     "src=10.0.0.2 dst=10.0.0.1 sport=443 dport=40000 [OFFLOAD] [ASSURED] mark=7 zone=0 use=3",
     dict(state="ESTABLISHED", dport=443, flags={"OFFLOAD", "ASSURED"}, mark="7")),
    ("ipv4     2 udp      17 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=4000 dport=4789 "
     "src=10.0.0.2 dst=10.0.0.1 sport=4789 dport=4000 [HW_OFFLOAD] mark=0 zone=0 use=3",
     dict(proto="udp", dport=4789, flags={"HW_OFFLOAD"})),
    ("ipv4     2 udp      17 25 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=53 zone-orig=3 [UNREPLIED] "
     "src=10.0.0.2 dst=10.0.0.1 sport=53 dport=1 mark=0 use=2",
     dict(zone="3", flags={"UNREPLIED"})),
    ("tcp      6 100 ESTABLISHED src=2001:db8::1 dst=2001:db8::2 sport=1 dport=22 src=2001:db8::2 "
     "dst=2001:db8::1 sport=22 dport=1 [ASSURED] mark=0 secctx=system_u:object_r:unlabeled_t:s0 zone=4 use=1",
     dict(src="2001:db8::1", zone="4", family="ipv6")),
    ("ipv4\t2\ttcp\t6\t100\tESTABLISHED\tsrc=10.1.1.1\tdst=10.1.1.2\tsport=1\tdport=80\t"
     "src=10.1.1.2\tdst=10.1.1.1\tsport=80\tdport=1\t[ASSURED]\tmark=0\tuse=1",
     dict(src="10.1.1.1", dport=80, state="ESTABLISHED")),
    ("tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=80 src=10.0.0.2 dst=10.0.0.1 "
     "sport=80 dport=1 [ASSURED] mark=0 use=1 labels=default,eth0 id=12345",
     dict(dport=80)),
    ("ipv6     10 udp      17 29 src=fd00:0000:0000:0000:0000:ffff:0a00:0001 dst=0000:0000:0000:0000:0000:ffff:0102:0304 "
     "sport=1 dport=53 [UNREPLIED] src=0000:0000:0000:0000:0000:ffff:0102:0304 dst=fd00:0000:0000:0000:0000:ffff:0a00:0001 "
     "sport=53 dport=1 mark=0 zone=0 use=2",
     dict(src="fd00::ffff:a00:1", dst="::ffff:1.2.3.4")),
]


def summary_of(path, flt=None, jobs=1):
    res, dec = scan(str(path), flt or Filter(), jobs)
    return res, Summary.from_columns(res.cols, dec).to_dict()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_real_exports_give_the_known_table(path):
    res, d = summary_of(path)
    assert res.malformed == 0
    for key, want in KNOWN.items():
        assert d[key] == want, key


def _meaning(row):
    dec = TextDecoder()
    proto = dec.proto(row[0])
    return (proto, dec.state(proto, row[1]), dec.addr(row[2]), dec.addr(row[3]),
            dec.dport(row[4]), dec.extra((row[5], row[6])))


@pytest.mark.parametrize("path", [p for p in SAMPLES if "xml" not in p.name], ids=lambda p: p.name)
def test_fast_and_tolerant_parsers_agree_on_real_lines(path):
    n = 0
    for line in path.read_bytes().splitlines():
        m = FAST.fullmatch(b"\n" + line)
        slow = parse_line(line)
        if m is None:
            assert slow is None or line.startswith(b"conntrack v"), line
            continue
        assert slow is not None, line
        assert _meaning(m.groups()) == _meaning(slow), line
        n += 1
    assert n == 13


@pytest.mark.parametrize("line,want", EXTRA_LINES, ids=range(len(EXTRA_LINES)))
def test_kernel_shaped_lines(tmp_path, line, want):
    p = tmp_path / "t"
    p.write_text(line + "\n")
    res, d = summary_of(p)
    assert (res.entries, res.malformed) == (1, 0), line
    exp_flags = want.get("flags")
    if "proto" in want:
        assert d["by_proto"] == {want["proto"]: 1}
    if "state" in want:
        assert d["by_proto_state"] == {f"{next(iter(d['by_proto']))}/{want['state']}": 1}
    if "src" in want:
        assert d["by_src"] == {want["src"]: 1}
    if "dst" in want:
        assert d["by_dst"] == {want["dst"]: 1}
    if "dport" in want:
        assert d["by_dport"] == ({str(want["dport"]): 1} if want["dport"] is not None else {})
    if exp_flags is not None:
        assert set(d["by_flags"]) == exp_flags
    if "mark" in want:
        assert d["by_mark"] == {want["mark"]: 1}
    if "zone" in want:
        assert d["by_zone"] == {want["zone"]: 1}
    if "family" in want:
        assert d["by_family"] == {want["family"]: 1}
    # and the tolerant parser alone means the same thing
    slow = parse_line(line.encode())
    m = FAST.fullmatch(b"\n" + line.encode())
    if m:
        assert _meaning(m.groups()) == _meaning(slow)


def test_malformed_lines_are_counted_with_line_numbers(tmp_path):
    good = (DATA / "known-plain.proc").read_text().splitlines()
    lines = good[:3] + ["ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst="] + good[3:6] + \
        ["total garbage here"] + ["ipv4 2 tcp 6 1 ESTABLISHED src=999.1.1.1 dst=1.1.1.1 sport=1 dport=2 "
                                   "src=1.1.1.1 dst=999.1.1.1 sport=2 dport=1 mark=0 use=1"] + good[6:] + [""]
    p = tmp_path / "mixed"
    p.write_text("\n".join(lines) + "\n")
    res, d = summary_of(p)
    assert res.entries == 13
    assert res.malformed == 3
    assert res.ignored == 1
    assert [n for n, _ in res.samples] == [4, 8, 9]
    assert d["by_state"] == KNOWN["by_state"]


def test_bad_port_value_is_malformed(tmp_path):
    p = tmp_path / "t"
    p.write_text("tcp 6 1 ESTABLISHED src=1.1.1.1 dst=1.1.1.2 sport=1 dport=70000 "
                 "src=1.1.1.2 dst=1.1.1.1 sport=70000 dport=1 mark=0 use=1\n")
    res, _ = summary_of(p)
    assert (res.entries, res.malformed) == (0, 1)


def test_gzip_and_stdin(tmp_path, monkeypatch):
    raw = (DATA / "known-plain.conntrack-L-extended").read_bytes()
    gz = tmp_path / "t.gz"
    gz.write_bytes(gzip.compress(raw))
    _, d = summary_of(gz)
    assert d["by_src"] == KNOWN["by_src"]

    class In:
        buffer = io.BufferedReader(io.BytesIO(gzip.compress(raw)))
    monkeypatch.setattr("sys.stdin", In)
    _, d = summary_of("-")
    assert d["by_dport"] == KNOWN["by_dport"]


def test_truncated_gzip_is_an_input_error(tmp_path):
    raw = (DATA / "known-plain.proc").read_bytes() * 200
    gz = tmp_path / "t.gz"
    gz.write_bytes(gzip.compress(raw)[:300])
    with pytest.raises(InputError, match="truncated"):
        summary_of(gz)


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x7fELF\x02\x01\x00\x00" * 100, "binary")])
def test_empty_and_binary_inputs(tmp_path, content, match):
    p = tmp_path / "x"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        summary_of(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        summary_of(tmp_path / "nope")
    with pytest.raises(InputError, match="directory"):
        summary_of(tmp_path)


def test_parallel_equals_sequential(tmp_path, monkeypatch):
    import subprocess
    import sys
    p = tmp_path / "big"
    gen = Path(__file__).parent.parent.parent / "scripts" / "gen_table.py"
    with open(p, "w") as f:
        subprocess.run([sys.executable, str(gen), "--lines", "30000", "--seed", "7"], stdout=f, check=True)
    # a malformed line in the middle, to check line numbering across parts
    lines = p.read_text().splitlines()
    lines.insert(20000, "broken line")
    p.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(tablefile, "PARALLEL_MIN", 1)
    monkeypatch.setattr(tablefile, "BLOCK", 64 << 10)
    r1, d1 = summary_of(p, jobs=1)
    r2, d2 = summary_of(p, jobs=3)
    assert d1 == d2
    assert r1.samples == r2.samples == [(20001, "broken line")]
    assert d1["total"] == 30000


def test_filters(tmp_path):
    path = DATA / "known-plain.proc"
    _, d = summary_of(path, Filter(protos=["udp"]))
    assert d["total"] == 6
    _, d = summary_of(path, Filter(states=["time_wait"]))
    assert d["total"] == 1 and d["by_src"] == {"127.0.0.3": 1}
    _, d = summary_of(path, Filter(src=["127.0.0.4/31"]))
    assert d["by_src"] == {"127.0.0.4": 1, "127.0.0.5": 5}
    _, d = summary_of(path, Filter(dst=["::/0"]))
    assert d["total"] == 3
    _, d = summary_of(path, Filter(dports=[5000, 8080]))
    assert d["by_proto_dport"] == {"udp/5000": 3, "tcp/8080": 3}
    _, d = summary_of(path, Filter(protos=["17"], dports=[5000], src=["127.0.0.0/8"]))
    assert d["total"] == 3


def test_top_keeps_the_biggest_and_counts_the_rest():
    from tracer.core.snapshot import Summary as S
    s = S(total=10)
    s.by_src.update({"a": 5, "b": 3, "c": 1, "d": 1})
    d = s.to_dict(top=2)
    assert d["by_src"] == {"a": 5, "b": 3}
    assert d["others"]["by_src"] == {"keys": 2, "entries": 2}
    assert list(s.to_dict()["by_src"]) == ["a", "b", "c", "d"]


GOOD = ("tcp 6 100 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=80 "
        "src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1 [ASSURED] mark=0 use=1")


@pytest.mark.parametrize("bad", [
    GOOD.replace("ESTABLISHED", "ESTABLISH\u00c9D"),                    # non-ASCII state
    GOOD.replace("dport=80 ", "dport=" + "9" * 5000 + " ", 1),           # absurd number
    GOOD.replace("mark=0", "mark="),                                     # empty mark
    GOOD.replace("mark=0", "mark=0x10"),                                 # not decimal
    GOOD.split(" src=10.0.0.2")[0],                                      # cut after the original tuple
    GOOD + " " + GOOD,                                                   # two entries on a line
    GOOD.replace(" use=1", " use=1 garbage"),                            # a bare word at the end
])
def test_hostile_lines_are_malformed_not_fatal(tmp_path, bad):
    p = tmp_path / "t"
    p.write_bytes((GOOD + "\n" + bad + "\n").encode("utf-8"))
    res, d = summary_of(p)
    assert (res.entries, res.malformed) == (1, 1)
    assert res.samples[0][0] == 2


def test_field_order_does_not_change_the_answer(tmp_path):
    line = GOOD.replace("[ASSURED] mark=0 use=1", "[ASSURED] zone=3 mark=7 use=1")
    p = tmp_path / "t"
    p.write_text(line + "\n" + line.replace(" ", "\t") + "\n")
    _, d = summary_of(p)
    assert d["by_mark"] == {"7": 2} and d["by_zone"] == {"3": 2}


def test_cr_only_line_endings_are_not_miscounted(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(("\r".join([GOOD] * 3) + "\r").encode())
    res, _ = summary_of(p)
    assert res.entries == 0 and res.malformed == 1


def test_crlf_and_bom(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join([GOOD] * 3) + "\r\n").encode())
    res, d = summary_of(p)
    assert (res.entries, res.malformed) == (3, 0)


def test_corrupt_gzip_is_an_input_error(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress((GOOD + "\n").encode() * 100)[:20] + b"\xff" * 200)
    with pytest.raises(InputError):
        summary_of(p)
