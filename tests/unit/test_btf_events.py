"""BTF reader on a synthetic blob; C and Python event structs agree."""

import ctypes
import re
import struct
from pathlib import Path

import pytest

from tracer.kernel.btf import BTF, BTFError
from tracer.core.events import CpuKeyC, DropEventC, DropKeyC, SrcKeyC, SrcValC, decode_drop


class Blob:
    """A tiny BTF encoder (Documentation/bpf/btf.rst), enough for tests."""

    def __init__(self):
        self.types = b""
        self.strs = b"\0"
        self.n = 0

    def s(self, name):
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def add(self, name, kind, vlen, size_or_type, extra=b"", kflag=0):
        self.types += struct.pack("<III", self.s(name), (kflag << 31) | (kind << 24) | vlen,
                                  size_or_type) + extra
        self.n += 1
        return self.n

    def int_(self, name, size):
        return self.add(name, 1, 0, size, struct.pack("<I", size * 8))

    def struct_(self, name, size, members, kind=4):
        extra = b"".join(struct.pack("<III", self.s(m), t, off) for m, t, off in members)
        return self.add(name, kind, len(members), size, extra)

    def enum(self, name, values):
        extra = b"".join(struct.pack("<Ii", self.s(k), v) for k, v in values.items())
        return self.add(name, 6, len(values), 4, extra)

    def bytes(self):
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strs))
        return hdr + self.types + self.strs


def sample_btf():
    b = Blob()
    u16 = b.int_("u16", 2)
    u64 = b.int_("u64", 8)
    inner = b.struct_("", 16, [("dev", u64, 0), ("sk", u64, 64)], kind=5)   # anonymous union
    wrap = b.struct_("", 24, [("pad", u64, 0), ("", inner, 64)])           # anonymous struct
    td = b.add("u16_t", 8, 0, u16)                                           # typedef
    b.struct_("sk_buff", 48, [("", wrap, 0), ("network_header", td, 256), ("head", u64, 320)])
    ns = b.struct_("ns_common", 8, [("stashed", u64, 0), ("inum", u16, 32)])
    b.struct_("net", 32, [("x", u64, 0), ("ns", ns, 128)])
    b.enum("skb_drop_reason", {"SKB_DROP_REASON_NOT_SPECIFIED": 2, "SKB_DROP_REASON_NETFILTER_DROP": 12})
    return BTF(b.bytes())


def test_offsets_through_anonymous_members_and_typedefs():
    btf = sample_btf()
    assert btf.offset("sk_buff", "dev") == 8
    assert btf.offset("sk_buff", "sk") == 16
    assert btf.offset("sk_buff", "network_header") == 32
    assert btf.offset("sk_buff", "head") == 40
    assert btf.offset("net", "ns.inum") == 20
    assert btf.enum("skb_drop_reason")["SKB_DROP_REASON_NETFILTER_DROP"] == 12


def test_missing_things_are_errors():
    btf = sample_btf()
    with pytest.raises(BTFError, match="no member"):
        btf.offset("sk_buff", "nope")
    with pytest.raises(BTFError, match="no 'nf_conn'"):
        btf.offset("nf_conn", "status")
    with pytest.raises(BTFError, match="magic"):
        BTF(b"\0" * 64)


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="needs kernel BTF (CONFIG_DEBUG_INFO_BTF)")
def test_running_kernel_btf():
    btf = BTF.load()
    assert 0 < btf.offset("sk_buff", "_nfct") < btf.size("sk_buff")
    assert btf.enum("skb_drop_reason")["SKB_DROP_REASON_NETFILTER_DROP"] > 0


_C_SIZES = {"u64": 8, "u32": 4, "u16": 2, "u8": 1}


def _c_struct_size(name: str) -> int:
    """Size of a struct in bpf/events.h, laid out as a C compiler would."""
    text = (Path(__file__).parents[2] / "bpf" / "events.h").read_text()
    body = re.search(r"struct %s \{(.*?)\};" % name, text, re.S).group(1)
    off = align = 0
    for typ, field, n in re.findall(r"\b(u64|u32|u16|u8)\s+(\w+)(?:\[(\d+)\])?;", body):
        size = _C_SIZES[typ]
        off = (off + size - 1) // size * size + size * int(n or 1)
        align = max(align, size)
    return (off + align - 1) // align * align


@pytest.mark.parametrize("c_name,py", [("drop_event", DropEventC), ("drop_key", DropKeyC),
                                       ("cpu_key", CpuKeyC), ("src_key", SrcKeyC),
                                       ("src_val", SrcValC)])
def test_event_structs_agree(c_name, py):
    assert _c_struct_size(c_name) == ctypes.sizeof(py)


def test_decode_drop_and_short_events():
    e = DropEventC(ts_ns=2_000_000_000, seq=3, netns=4026531840, cpu=1, family=4, proto=17,
                   ct_attached=0, sport=1234, dport=53)
    e.saddr[:4] = [10, 0, 0, 1]
    e.daddr[:4] = [10, 0, 0, 2]
    d = decode_drop(bytes(e) + b"\0\0\0\0", boot_offset=100.0)   # perf pads raw samples
    assert (d.proto, d.src, d.sport, d.dst, d.dport, d.family, d.seq) == \
        ("udp", "10.0.0.1", 1234, "10.0.0.2", 53, "ipv4", 3)
    assert d.ts == 102.0
    with pytest.raises(ValueError, match="short"):
        decode_drop(bytes(e)[:40], 0.0)
