"""The BPF programs' configuration: every -D flag, what it means and whether
it is required, in one table. cflags() refuses a flag the table does not
know (a misspelt optional flag would silently change the program) and a
missing required one; bpf/common.h stops the compile with #error on a
missing required one too (a unit test keeps the two lists equal)."""

from __future__ import annotations

from typing import NamedTuple


class Flag(NamedTuple):
    meaning: str
    required: bool


FLAGS: dict[str, Flag] = {
    # struct offsets from the running kernel's BTF (tracer/kernel/btf.py)
    "OFF_SKB_HEAD": Flag("offset of sk_buff.head", True),
    "OFF_SKB_NH": Flag("offset of sk_buff.network_header", True),
    "OFF_SKB_NFCT": Flag("offset of sk_buff._nfct (the attached conntrack entry)", True),
    "OFF_SKB_DEV": Flag("offset of sk_buff.dev", True),
    "OFF_SKB_SK": Flag("offset of sk_buff.sk", True),
    "OFF_DEV_NET": Flag("offset of net_device.nd_net", True),
    "OFF_SK_NET": Flag("offset of sock.__sk_common.skc_net", True),
    "OFF_NET_INUM": Flag("offset of net.ns.inum (the namespace's inode)", True),
    "OFF_NET_COOKIE": Flag("offset of net.net_cookie (5.14+), -1 where the kernel has none", True),
    # what user space asks for
    "RATE_PER_SEC": Flag("events sent per second and CPU (the counts are exact whatever it is)", True),
    "RATE_BURST": Flag("events sent in a burst per CPU", True),
    "RINGBUF_PAGES": Flag("pages of the one event ring buffer (a power of 2)", True),
    # how netfilter's drops are told among skb frees (tracer/kernel/features.drop_filter): one of
    "REASON_NETFILTER_DROP": Flag("enum skb_drop_reason's SKB_DROP_REASON_NETFILTER_DROP (5.17+)", False),
    "NF_HOOK_SLOW": Flag("address of nf_hook_slow (before 5.17: netfilter's frees by call site)", False),
    "NF_HOOK_SLOW_SIZE": Flag("size of nf_hook_slow, with NF_HOOK_SLOW", False),
    "CT_NO_RULE_HALF": Flag("no skb:kfree_skb half (kprobe backend where neither works)", False),
    # struct nf_conn from the BTF (nf_conntrack built in, or its module's split BTF)
    "HAVE_CT_TUPLE": Flag("the T_*, CT_* and IPS_* flags below are given", False),
    "T_SRC_U3": Flag("offset of nf_conntrack_tuple.src.u3", False),
    "T_SRC_PORT": Flag("offset of nf_conntrack_tuple.src.u", False),
    "T_L3NUM": Flag("offset of nf_conntrack_tuple.src.l3num", False),
    "T_DST_U3": Flag("offset of nf_conntrack_tuple.dst.u3", False),
    "T_DST_PORT": Flag("offset of nf_conntrack_tuple.dst.u", False),
    "T_PROTONUM": Flag("offset of nf_conntrack_tuple.dst.protonum", False),
    "CT_TUPLE": Flag("offset of nf_conn's original tuple (tuplehash[0].tuple)", False),
    "CT_NET": Flag("offset of nf_conn.ct_net", False),
    "CT_STATUS": Flag("offset of nf_conn.status", False),
    "IPS_CONFIRMED_": Flag("enum ip_conntrack_status's IPS_CONFIRMED", False),
    "IPS_SRC_NAT_DONE_": Flag("enum ip_conntrack_status's IPS_SRC_NAT_DONE", False),
}

REQUIRED = tuple(k for k, f in FLAGS.items() if f.required)


class ConfigError(ValueError):
    pass


def cflags(consts: dict, include_dir: str) -> list[str]:
    """-D flags for BCC from {flag: value}, checked against FLAGS."""
    unknown = sorted(set(consts) - set(FLAGS))
    if unknown:
        raise ConfigError(f"unknown BPF flags {', '.join(unknown)} (see tracer/backends/bpfconfig.py)")
    missing = [k for k in REQUIRED if k not in consts]
    if missing:
        raise ConfigError(f"missing BPF flags {', '.join(missing)}")
    return [f"-D{k}={v}" for k, v in consts.items()] + [f"-I{include_dir}"]


def ring_pages(per_cpu_pages: int, cpus: int) -> int:
    """The ring's size in pages: per_cpu_pages for each CPU, rounded up to a
    power of 2 (the kernel requires one)."""
    n = max(1, per_cpu_pages * max(cpus, 1))
    return 1 << (n - 1).bit_length()
