"""The generated BPF contract (scripts/gen-abi -> tracer/backends/abi.py):
fresh, laid out as C lays out bpf/events.h, with the stat orders of its enums."""

import ctypes
import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from tracer.backends import abi
from tracer.backends.tracepoint import layout

ROOT = Path(__file__).parents[2]


def _gen():
    loader = importlib.machinery.SourceFileLoader("gen_abi", str(ROOT / "scripts" / "gen-abi"))
    spec = importlib.util.spec_from_loader("gen_abi", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_abi_is_not_stale():
    assert (ROOT / "tracer" / "backends" / "abi.py").read_text() == _gen().generate(), \
        "bpf/events.h changed: run scripts/gen-abi"


@pytest.mark.parametrize("name", sorted(abi.STRUCTS))
def test_ctypes_layout_is_cs(name):
    cls, fields, size = abi.STRUCTS[name]
    assert layout(cls) == fields and ctypes.sizeof(cls) == size


def test_field_order_and_offsets_of_the_event():
    fields = {f: (off, size) for f, off, size in abi.STRUCTS["drop_event"][1]}
    assert fields["sport"] == (36, 2) and fields["dport"] == (38, 2)
    assert fields["saddr"] == (40, 16) and fields["daddr"] == (56, 16)
    assert fields["osport"] == (76, 2) and fields["odport"] == (78, 2)
    assert [f for f, *_ in abi.STRUCTS["cpu_key"][1]] == ["netns_cookie", "netns", "cpu", "ct_attached", "pad"]


def test_generator_parses_and_lays_out():
    g = _gen()
    spec = g.parse("#define X_MAX 7\nstruct s { u8 a; /* c */ u32 b; u16 c[3]; };\n"
                   "enum { ST_A = 0, ST_B, ST_MAX, };")
    assert spec["defines"] == {"X_MAX": 7}
    assert g.layout(spec["structs"]["s"]) == ([("a", 0, 1), ("b", 4, 4), ("c", 8, 6)], 16)
    assert "STATS = (" in g.render(spec) and "'b'," in g.render(spec)
    with pytest.raises(SystemExit, match="cannot read field"):
        g.parse("struct t { int x; };")


def test_stat_orders_follow_the_enums():
    assert abi.STATS[abi.ST_SEQ_FULL] == "seq_full" and len(abi.STATS) == abi.ST_MAX
    assert abi.CT_STATS[abi.CT_NOT_INSERTED] == "not_inserted" and len(abi.CT_STATS) == abi.CT_MAX
    assert abi.SOURCES_MAX == 65536 and abi.DROP_SEQ_MAX == 16384


class _Map:
    def __init__(self, key=None, leaf=None, event=None):
        self.Key, self.Leaf, self._event = key, leaf, event

    def event(self, data):
        return self._event.from_buffer_copy(bytes(ctypes.sizeof(self._event)))


def test_start_check_refuses_a_program_compiled_from_another_header():
    from tracer.backends import BackendError
    from tracer.backends.tracepoint import check_abi

    good = dict(events=_Map(event=abi.DropEvent), sources=_Map(key=abi.DropKey),
                drop_seq=_Map(key=abi.CpuKey))
    check_abi(good)                                   # the tracepoint program: no ct_sources

    f = list(abi.DropEvent._fields_)                  # sport and dport swapped in the C header
    names = [n for n, _ in f]
    i, j = names.index("sport"), names.index("dport")
    f[i], f[j] = f[j], f[i]
    Swapped = type("Swapped", (ctypes.Structure,), {"_fields_": f})
    bad = dict(good, events=_Map(event=Swapped))
    with pytest.raises(BackendError, match="struct drop_event as compiled differs"):
        check_abi(bad)
