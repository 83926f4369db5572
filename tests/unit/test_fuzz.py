"""Property-based fuzzing (Debian's python3-hypothesis) of the parsers that
read what others wrote: table exports (/proc/net/nf_conntrack, conntrack -L,
conntrack -L -o extended; plain and gzip), captures, ctnetlink messages
(raw bytes into the decoder), sysctl files and --sysctl values.

The property: every input ends in a result or the parser's one-line error
(InputError, CaptureError, NetlinkError, SettingsError) and nothing else.
Bounds: each example has a deadline (DEADLINE ms of wall time, hypothesis
fails the example beyond it) and every test runs under an address-space
limit of its current size + MEMORY (RLIMIT_AS soft limit, restored after),
so a blow-up is a MemoryError failure here, not a machine out of memory.
The CI budget: max_examples per test (MAX_EXAMPLES: ~25 s for the file on
this project's 2-CPU machines under load), derandomized and without an
example database (the same examples every run); crashers found are the explicit
@example cases.
"""

import gzip
import json
import resource
import struct
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tracer.core.doctor import diagnose
from tracer.core.filters import Filter
from tracer.core.report import analyse, capture_state
from tracer.formats import export
from tracer.formats.capture import CaptureError, read_capture
from tracer.kernel import ctnetlink
from tracer.kernel import host
from tracer.views.report import render, to_html

MAX_EXAMPLES = 150
DEADLINE = 2000
MEMORY = 512 << 20
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@contextmanager
def memory_bound():
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def bounded():
    with memory_bound():
        yield


# --- exports -----------------------------------------------------------------------------
PROC = ("ipv4     2 tcp      6 {t} ESTABLISHED src={a} dst={b} sport={p} dport={q} src={b} dst={a} "
        "sport={q} dport={p} [ASSURED] mark={m} zone=0 use=2")
LIST = ("tcp      6 {t} ESTABLISHED src={a} dst={b} sport={p} dport={q} src={b} dst={a} sport={q} "
        "dport={p} [ASSURED] mark={m} use=1")
EXTENDED = ("ipv4     2 udp      17 {t} src={a} dst={b} sport={p} dport={q} packets=1 bytes=76 [UNREPLIED] "
            "src={b} dst={a} sport={q} dport={p} packets=0 bytes=0 mark={m} secctx=null use=1")
num = st.one_of(st.integers(0, 70000).map(str), st.text("0123456789²٣-+e.", min_size=0, max_size=30),
                st.just("9" * 5000))
addr = st.one_of(st.ip_addresses().map(str), st.text(min_size=0, max_size=50))


@st.composite
def export_text(draw):
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from([PROC, LIST, EXTENDED, None]))
        if kind is None:
            lines.append(draw(st.text(max_size=200)))
            continue
        line = kind.format(t=draw(num), a=draw(addr), b=draw(addr), p=draw(num), q=draw(num), m=draw(num))
        if draw(st.booleans()):                      # cut, spliced or doubled
            i = draw(st.integers(0, len(line)))
            line = draw(st.sampled_from([line[:i], line[:i] + " " + line[i:], line + " " + line,
                                         line.replace(" ", "\t"), line[:i] + "\x00" + line[i:]]))
        lines.append(line)
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n", "\r\n"]))


def _scan(data: bytes, tmp_path, timed: bool):
    p = tmp_path / "export"
    p.write_bytes(data)
    try:
        res, _ = export.scan(str(p), Filter(), 1, timed=timed)
    except export.InputError as e:
        assert "\n" not in str(e)
        return None
    assert res.entries + res.malformed + res.ignored == res.lines
    return res


@FUZZ
@given(text=export_text(), gz=st.booleans())
@example(text=PROC.format(t="9" * 5000, a="10.0.0.1", b="10.0.0.2", p=1, q=2, m=0), gz=False)
@example(text=PROC.format(t="1" + "0" * 29, a="10.0.0.1", b="10.0.0.2", p=1, q=2, m=0), gz=True)
@example(text=PROC.format(t=5, a="10.0.0.1", b="10.0.0.2", p="9" * 5000, q=2, m="9" * 5000), gz=False)
def test_fuzz_exports(tmp_path_factory, text, gz):
    data = text.encode("utf-8", "surrogateescape")
    if gz:
        data = gzip.compress(data)
    tmp = tmp_path_factory.mktemp("x")
    _scan(data, tmp, timed=False)
    try:
        h = host.read_export(str(tmp / "export"), {}, 1)
    except export.InputError:
        return
    diagnose(h)


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=b"\x1f\x8b" + b"\x00" * 20)
@example(data=gzip.compress(b"\n" * 100000)[:-8])
def test_fuzz_export_bytes(tmp_path_factory, data):
    _scan(data, tmp_path_factory.mktemp("x"), timed=True)


# --- sysctl files and --sysctl values ---------------------------------------------------
NAMES = ["net.netfilter.nf_conntrack_udp_timeout", "nf_conntrack_max", "udp_timeout", "buckets",
         "net.nf_conntrack_max", "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
         "net.netfilter.nf_conntrack_acct", "x"]


@FUZZ
@given(lines=st.lists(st.tuples(st.sampled_from(NAMES) | st.text(max_size=30),
                                st.sampled_from([" = ", "=", " ", "\t"]), num | st.text(max_size=20)),
                      max_size=10))
@example(lines=[("udp_timeout", "=", "²")])
@example(lines=[("nf_conntrack_max", " = ", "9" * 5000)])
def test_fuzz_sysctls(lines):
    text = "\n".join(a + s + b for a, s, b in lines)
    try:
        got = host.parse_settings(text, "sysctls.txt")
    except host.SettingsError as e:
        assert "\n" not in str(e)
        return
    for k, v in got.items():
        assert k in host.SETTINGS and 0 <= v <= host.SETTING_MAX.get(k, 21474836)


# --- captures ---------------------------------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4),
                        max_leaves=20)
STATE_KEYS = ["count", "max", "buckets", "sysctls", "stats", "by_state", "by_proto_dport", "by_src",
              "containers", "rules", "total", "deltas", "kernel", "max_scope", "nat", "ages", "window",
              "entry_bytes", "assumed", "export", "insert_failed_by_dst"]
state = st.dictionaries(st.sampled_from(STATE_KEYS), json_any, max_size=8)
ages = st.fixed_dictionaries({"remaining": st.dictionaries(st.text(max_size=10), st.dictionaries(
    st.sampled_from(["1", "30", "Infinity", "1e308", "-5", "x"]), json_leaf, max_size=3), max_size=3)},
    optional={"schedule": json_any, "idle": json_any, "candidates": json_any, "total": json_leaf,
              "life": json_leaf, "new_kind": json_leaf, "assured": json_leaf})
record = st.fixed_dictionaries(
    {"k": st.sampled_from(["stats", "insert", "delete", "drop", "lost", "end", "x"]),
     "t": st.one_of(st.floats(999, 1100), json_leaf)},
    optional={"kernel": json_any, "count": json_leaf, "max": json_leaf, "src": json_leaf, "dst": json_leaf,
              "dport": json_leaf, "proto": json_leaf, "reason": st.sampled_from(["insert_failed", "table_full"]),
              "container": json_leaf, "n": json_leaf, "sources": json_any, "state": state, "x": json_any})


@FUZZ
@given(head=state, ages=ages, records=st.lists(record, max_size=12), cut=st.integers(0, 40))
@example(head={"total": 5}, ages={"remaining": {"udp/UNREPLIED": {"Infinity": 5}}, "total": 5},
         records=[], cut=0)
@example(head={"by_src": {"10.0.0.1; id #": 500}, "total": 600}, ages={"remaining": {}}, records=[], cut=0)
def test_fuzz_captures(tmp_path_factory, head, ages, records, cut):
    head = dict(head, ages=ages)
    lines = [json.dumps({"format": "cttrace-capture", "version": 1, "host": "h", "state": head})]
    lines += [json.dumps({"k": "stats", "t": 1000.0 + i, "count": 50, "max": 100,
                          "kernel": {"drop": i, "insert_failed": i}}) for i in range(2)]
    lines += [json.dumps(r) for r in records]
    data = gzip.compress("\n".join(lines).encode("utf-8", "surrogatepass"))
    if cut:
        data = data[:max(len(data) - cut, 0)]
    p = tmp_path_factory.mktemp("c") / "c.ctcap"
    p.write_bytes(data)
    try:
        cap = read_capture(str(p))
    except CaptureError as e:
        assert "\n" not in str(e)
        return
    rep = analyse(cap)
    json.dumps(rep)
    to_html(rep)
    render(rep)
    diagnose(capture_state(cap))


# --- ctnetlink messages -------------------------------------------------------------------
def nla(t, payload):
    return struct.pack("=HH", 4 + len(payload), t) + payload + b"\0" * (-len(payload) % 4)


attr = st.recursive(st.tuples(st.integers(0, 20), st.binary(max_size=20)).map(lambda x: nla(*x)),
                    lambda c: st.tuples(st.integers(0, 20), st.lists(c, max_size=4)).map(
                        lambda x: nla(x[0] | (0x8000 if x[0] % 2 else 0), b"".join(x[1]))),
                    max_leaves=12)


@st.composite
def messages(draw):
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        body = b"\x02\x00\x00\x00" + b"".join(draw(st.lists(attr, max_size=6)))
        mtype = draw(st.sampled_from([0x100, 0x102, 1, 2, 3, draw(st.integers(0, 0xffff))]))
        mlen = 16 + len(body)
        if draw(st.booleans()):
            mlen = draw(st.integers(0, 0xffffffff))
        out += struct.pack("=IHHII", mlen, mtype, draw(st.integers(0, 0xffff)), 0, 0) + body
    return out


@FUZZ
@given(buf=messages() | st.binary(max_size=2048))
@example(buf=struct.pack("=IHHII", 0, 0x100, 0, 0, 0))
@example(buf=struct.pack("=IHHII", 16, 2, 0, 0, 0) + struct.pack("=i", -1))
def test_fuzz_ctnetlink(buf):
    p = ctnetlink._Parser()
    b = bytearray(buf)
    try:
        rows = p.rows(b, len(b))
    except ctnetlink.NetlinkError as e:
        assert "\n" not in str(e)
        return
    dec = ctnetlink.NetlinkDecoder()
    for r in rows:
        dec.addr(r[2]), dec.addr(r[3])
    off = 0
    while off + 20 <= len(b):                    # the one walker, reply tuple too (NAT's reading)
        mlen = struct.unpack_from("=I", b, off)[0]
        if mlen < 20 or off + mlen > len(b):
            break
        ctnetlink.walk(b, off, mlen, reply=True)
        off += (mlen + 3) & ~3
