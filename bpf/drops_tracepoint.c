/* cttrace: netfilter drops, from tracepoint skb:kfree_skb (Linux 5.17+ for
 * the drop reason; restricted kernels: no kprobes, no fentry needed).
 *
 * Every skb freed with reason NETFILTER_DROP is counted per source in
 * `sources` (exact) and sent as a drop_event through `events`, at most
 * RATE_PER_SEC per CPU (burst RATE_BURST); the rest are counted in
 * ST_SAMPLED_OUT. Whether a conntrack entry was attached (skb->_nfct) and a
 * per-(netns, cpu) sequence of ct-less drops let user space tell table-full
 * drops (counted by the kernel's per-CPU `drop` stat) from rule drops.
 *
 * Struct offsets and the enum value come from the running kernel's BTF, as
 * -D constants (tracer/btf.py): OFF_SKB_HEAD, OFF_SKB_NH, OFF_SKB_NFCT,
 * OFF_SKB_DEV, OFF_SKB_SK, OFF_DEV_NET, OFF_SK_NET, OFF_NET_INUM,
 * REASON_NETFILTER_DROP (5.17+) or NF_HOOK_SLOW/NF_HOOK_SLOW_SIZE (older
 * kernels: the drop is recognised by kfree_skb's call site), RATE_PER_SEC,
 * RATE_BURST. CT_NO_RULE_HALF: the kprobe backend without this probe.
 * Cost: a handful of probe reads per netfilter drop; nothing on other frees.
 */
/* The tracepoint's struct names enum skb_drop_reason: it must be complete.
 * Its values are never taken from these headers (see REASON_NETFILTER_DROP). */
#include <linux/skbuff.h>
#if __has_include(<net/dropreason.h>)
#include <net/dropreason.h>
#endif
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include "events.h"

#ifdef CT_KPROBES
struct alloc_arg { u64 net; u64 orig; };
struct confirm_arg { u64 skb; u64 ct; };
/* Set by the kprobe backend when conntrack itself refuses a packet on this
 * CPU; the next netfilter drop here is that packet (already reported). */
BPF_PERCPU_ARRAY(ct_dropping, u64, 1);
static __always_inline void mark_conntrack_drop(void)
{
    int k = 0;
    u64 *v = ct_dropping.lookup(&k);
    if (v)
        *v = 1;
}
#endif

BPF_PERF_OUTPUT(events);
BPF_HASH(sources, struct drop_key, u64, 65536);
BPF_HASH(ctless_seq, struct cpu_key, u64, 16384);
BPF_PERCPU_ARRAY(stats, u64, ST_MAX);
BPF_PERCPU_ARRAY(bucket, u64, 2);      /* [0] tokens (scaled), [1] last refill ns */

static __always_inline void stat_add(int i)
{
    u64 *v = stats.lookup(&i);
    if (v)
        (*v)++;
}

static __always_inline int take_token(u64 now)
{
    int k0 = 0, k1 = 1;
    u64 *tokens = bucket.lookup(&k0), *last = bucket.lookup(&k1);
    if (!tokens || !last)
        return 0;
    /* tokens are scaled by 1e9 so that refill = elapsed_ns * rate */
    u64 cap = (u64)RATE_BURST * 1000000000ULL;
    u64 t = *tokens + (now - *last) * (u64)RATE_PER_SEC;
    if (t > cap || *last == 0)
        t = cap;
    *last = now;
    if (t < 1000000000ULL) {
        *tokens = t;
        return 0;
    }
    *tokens = t - 1000000000ULL;
    return 1;
}

static __always_inline u32 net_inum(void *net)
{
    u32 inum = 0;
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + OFF_NET_INUM);
    return inum;
}

#ifndef CT_NO_RULE_HALF
TRACEPOINT_PROBE(skb, kfree_skb)
{
#ifdef NF_HOOK_SLOW
    /* before 5.17 (no drop reason): netfilter's drops are the frees called
     * from nf_hook_slow() (NF_DROP verdict); `location` is kfree_skb's caller */
    if ((u64)args->location - NF_HOOK_SLOW >= NF_HOOK_SLOW_SIZE)
        return 0;
#else
    if (args->reason != REASON_NETFILTER_DROP)
        return 0;
#endif
#ifdef CT_KPROBES
    {
        int k = 0;
        u64 *v = ct_dropping.lookup(&k);
        if (v && *v) {          /* conntrack's own refusal: counted by its kprobe */
            *v = 0;
            return 0;
        }
    }
#endif
    char *skb = (char *)args->skbaddr;
    struct drop_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    stat_add(ST_DROPS);

    unsigned long nfct = 0;
    bpf_probe_read_kernel(&nfct, sizeof(nfct), skb + OFF_SKB_NFCT);
    ev.ct_attached = nfct != 0;
#ifdef CT_KPROBES
    ev.kind = KIND_RULE;        /* conntrack's own drops were filtered above */
#endif

    /* namespace: the device's (received or forwarded packets), else the socket's */
    void *dev = 0, *sk = 0, *net = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV);
    if (dev)
        bpf_probe_read_kernel(&net, sizeof(net), (char *)dev + OFF_DEV_NET);
    if (!net) {
        bpf_probe_read_kernel(&sk, sizeof(sk), skb + OFF_SKB_SK);
        if (sk)
            bpf_probe_read_kernel(&net, sizeof(net), (char *)sk + OFF_SK_NET);
    }
    ev.netns = net_inum(net);

    /* the packet: network header, then ports */
    char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), skb + OFF_SKB_HEAD);
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + OFF_SKB_NH);
    char *l3 = head + nh;
    u8 vihl = 0;
    bpf_probe_read_kernel(&vihl, 1, l3);
    char *l4 = 0;
    if ((vihl >> 4) == 4) {
        struct iphdr ip = {};
        bpf_probe_read_kernel(&ip, sizeof(ip), l3);
        ev.family = 4;
        ev.proto = ip.protocol;
        __builtin_memcpy(ev.saddr, &ip.saddr, 4);
        __builtin_memcpy(ev.daddr, &ip.daddr, 4);
        l4 = l3 + (vihl & 0xf) * 4;
    } else if ((vihl >> 4) == 6) {
        struct ipv6hdr ip6 = {};
        bpf_probe_read_kernel(&ip6, sizeof(ip6), l3);
        ev.family = 6;
        ev.proto = ip6.nexthdr;
        __builtin_memcpy(ev.saddr, &ip6.saddr, 16);
        __builtin_memcpy(ev.daddr, &ip6.daddr, 16);
        l4 = l3 + sizeof(ip6);
    }
    if (l4) {
        u8 p = ev.proto;
        if (p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP || p == IPPROTO_UDPLITE ||
            p == IPPROTO_DCCP) {
            u16 ports[2] = {};
            bpf_probe_read_kernel(ports, sizeof(ports), l4);
            ev.sport = ntohs(ports[0]);
            ev.dport = ntohs(ports[1]);
        } else if (p == IPPROTO_ICMP || p == 58 /* ICMPv6 */) {
            u8 tc[2] = {};
            bpf_probe_read_kernel(tc, sizeof(tc), l4);
            ev.sport = tc[0];
            ev.dport = tc[1];
        }
    }

    if (!ev.ct_attached) {
        stat_add(ST_CTLESS);
        struct cpu_key ck = {.netns = ev.netns, .cpu = ev.cpu};
        u64 one = 1;
        u64 *seq = ctless_seq.lookup(&ck);
        if (seq) {
            __sync_fetch_and_add(seq, 1);
            ev.seq = *seq;
        } else {
            ctless_seq.update(&ck, &one);
            ev.seq = 1;
        }
    }

    struct drop_key key = {.netns = ev.netns, .family = ev.family, .proto = ev.proto,
                           .ct_attached = ev.ct_attached};
    __builtin_memcpy(key.saddr, ev.saddr, 16);
    u64 *cnt = sources.lookup(&key);
    if (cnt) {
        __sync_fetch_and_add(cnt, 1);
    } else {
        u64 one = 1;
        if (sources.update(&key, &one) != 0)
            stat_add(ST_KEYS_FULL);
    }

    if (!take_token(ev.ts_ns)) {
        stat_add(ST_SAMPLED_OUT);
        return 0;
    }
    if (events.perf_submit(args, &ev, sizeof(ev)) == 0)
        stat_add(ST_EMITTED);
    else
        stat_add(ST_SUBMIT_FAILED);
    return 0;
}
#endif /* CT_NO_RULE_HALF */
