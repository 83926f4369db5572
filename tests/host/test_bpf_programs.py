"""Each BPF program compiles and loads on its own with BCC on this kernel,
in each configuration the backends build (the drop half by reason, the
kprobe program with and without it), and the structs BCC compiled are laid
out as the generated tracer/backends/abi.py says. Loading a kprobe program
needs no kprobe support (attaching would)."""

import pytest

from tracer.backends import tracepoint as tp
from tracer.backends.kprobe import KprobeBackend
from tracer.kernel import features, headers

KPROBE_FUNCS = ("create_entry", "alloc_entry", "alloc_return", "confirm_entry", "confirm_return",
                "delete_entry", "delete_return")


@pytest.fixture(scope="module")
def bcc():
    bcc = pytest.importorskip("bcc", reason="needs BCC (python3-bpfcc)")
    if headers.ensure().path is None:
        pytest.skip("needs a kernel header tree BCC can compile with")
    return bcc


def compile_(bcc, text, flags):
    with features.quiet_stderr():
        b = bcc.BPF(text=text, cflags=flags)
    return b


def test_tracepoint_program_alone(bcc, needs_tracepoint):
    text, flags = tp.TracepointBackend().program()
    b = compile_(bcc, text, flags)
    try:
        tp.check_abi(b)
        assert len(b["drop_seq"]) == 0 and b["drop_seq"].Key.__name__ == "cpu_key"
    finally:
        b.cleanup()


@pytest.mark.parametrize("rule_half", [True, False])
def test_kprobe_program_alone(bcc, rule_half, monkeypatch):
    btf = tp.load_btf("nf_conntrack")
    if not tp.ct_tuple_consts(btf):
        pytest.skip("this kernel's BTF does not describe struct nf_conn (the conntrack probes need it)")
    if not rule_half:
        monkeypatch.setattr(features, "drop_filter", lambda: None)
    elif features.drop_filter() is None:
        pytest.skip("no way to tell netfilter's drops on this kernel")
    text, flags = KprobeBackend().program()
    assert ("-DCT_NO_RULE_HALF=1" in flags) is not rule_half
    b = compile_(bcc, text, flags)
    try:
        for fn in KPROBE_FUNCS:
            b.load_func(fn, bcc.BPF.KPROBE)
        tp.check_abi(b)
        assert b["ct_sources"].Leaf.__name__ == "src_val"
    finally:
        b.cleanup()
