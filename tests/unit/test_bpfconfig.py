"""The BPF configuration table (tracer/backends/bpfconfig.py) against the
programs' #error guards, and the programs' text as BCC gets it."""

import re

import pytest

from tracer.backends import bpfconfig
from tracer.backends.tracepoint import bpf_source


def test_required_flags_are_guarded_in_common_h():
    text = bpf_source("drops_tracepoint.c")
    guarded = set(re.findall(r"#ifndef (\w+)\n#error", text))
    assert guarded == set(bpfconfig.REQUIRED)


def test_every_flag_the_programs_test_is_in_the_table():
    used = set()
    for prog in ("drops_tracepoint.c", "conntrack_kprobe.c"):
        text = bpf_source(prog)
        used |= set(re.findall(r"#if(?:n?def)? (\w+)", text))
        used |= set(re.findall(r"defined\((\w+)\)", text))
    own = {"CTTRACE_COMMON_H", "CTTRACE_EVENTS_H", "CTTRACE_NF_DROP_H", "CT_KPROBES", "defined", "__has_include"}
    assert used - own <= set(bpfconfig.FLAGS), used - own - set(bpfconfig.FLAGS)


def test_cflags_refuses_unknown_and_missing_flags():
    full = {k: 1 for k in bpfconfig.REQUIRED}
    assert "-DRATE_BURST=1" in bpfconfig.cflags(full, "/x") and bpfconfig.cflags(full, "/x")[-1] == "-I/x"
    with pytest.raises(bpfconfig.ConfigError, match="unknown BPF flags HAVE_CT_TUPEL"):
        bpfconfig.cflags({**full, "HAVE_CT_TUPEL": 1}, "/x")
    del full["OFF_SKB_NH"]
    with pytest.raises(bpfconfig.ConfigError, match="missing BPF flags OFF_SKB_NH"):
        bpfconfig.cflags(full, "/x")


def test_programs_stand_alone_with_their_headers_inlined():
    for prog in ("drops_tracepoint.c", "conntrack_kprobe.c"):
        text = bpf_source(prog)
        assert '#include "' not in text                    # BCC rewrites map calls in the main text only
        assert text.count("#define CTTRACE_COMMON_H") == 1 and "TRACEPOINT_PROBE(skb, kfree_skb)" in text


def test_ring_pages_a_power_of_two():
    assert bpfconfig.ring_pages(256, 2) == 512
    assert bpfconfig.ring_pages(100, 3) == 512 and bpfconfig.ring_pages(1, 1) == 1
