"""BTF reader on a synthetic blob; a drop event decoded from its bytes."""

import struct
from pathlib import Path

import pytest

from tracer.kernel.btf import BTF, BTFError
from tracer.core.events import decode_drop


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


def test_decode_drop_and_short_events():
    # struct drop_event of bpf/events.h, field by field in C order
    # (ts_ns seq netns_cookie netns cpu family proto ct_attached kind sport dport
    #  saddr daddr has_orig fragment clash_candidate pad osport odport osaddr odaddr)
    raw = struct.pack("<QQQIIBBBBHH16s16sBBBBHH16s16s", 2_000_000_000, 3, 9, 4026531840, 1,
                      4, 17, 0, 0, 1234, 53, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
                      0, 0, 0, 0, 0, 0, b"", b"")
    assert len(raw) == 112
    d = decode_drop(raw + b"\0\0\0\0", boot_offset=100.0)   # longer records are cut
    assert (d.proto, d.src, d.sport, d.dst, d.dport, d.family, d.seq, d.netns, d.cpu, d.netns_cookie) == \
        ("udp", "10.0.0.1", 1234, "10.0.0.2", 53, "ipv4", 3, 4026531840, 1, 9)
    assert d.ts == 102.0 and d.reason == "" and d.translated is None
    with pytest.raises(ValueError, match="short"):
        decode_drop(raw[:40], 0.0)
