/* cttrace: the netfilter-drop half, skb:kfree_skb (Linux 5.17+ for the drop
 * reason; before, netfilter's frees are told by their call site).
 *
 * Every skb freed with reason NETFILTER_DROP is counted per source in
 * `sources` (exact) and sent as a drop_event through `events`, at most
 * RATE_PER_SEC per CPU (burst RATE_BURST); the rest are counted in
 * ST_SAMPLED_OUT. Whether a conntrack entry was attached (skb->_nfct) and
 * per-(netns, cpu) sequences of drops with and without one let user space
 * match drops with the kernel's per-CPU counters (tracer/core/classify.py,
 * tracer/core/counters.py): without an entry and counted in `drop` (less
 * the clash drops): conntrack refused the packet (table full); with one and
 * counted in `insert_failed`: a clash at confirm (NAT port exhaustion, the
 * UDP DNS race); the rest: rules. Where an entry is attached, its original
 * tuple (what the sender used, before NAT) travels with the event and keys
 * the per-source count.
 *
 * The TRACEPOINT_PROBE itself must sit in the main file (BCC makes the
 * tracepoint's argument struct there): each program has
 *     TRACEPOINT_PROBE(skb, kfree_skb) { return NF_DROP_PROBE(args); }
 * Configuration: REASON_NETFILTER_DROP (5.17+) or NF_HOOK_SLOW and
 * NF_HOOK_SLOW_SIZE (older kernels); CT_KPROBES: the program defines
 * conntrack_own() (the kprobe backend). Cost: a handful of probe reads per
 * netfilter drop; nothing on other frees.
 */
#ifndef CTTRACE_NF_DROP_H
#define CTTRACE_NF_DROP_H
#include "common.h"

#if defined(NF_HOOK_SLOW) && !defined(NF_HOOK_SLOW_SIZE)
#error "NF_HOOK_SLOW needs NF_HOOK_SLOW_SIZE"
#endif
#if !defined(NF_HOOK_SLOW) && !defined(REASON_NETFILTER_DROP)
#error "the drop half needs REASON_NETFILTER_DROP (5.17+) or NF_HOOK_SLOW (older kernels)"
#endif

#ifdef NF_HOOK_SLOW
/* before 5.17 (no drop reason): netfilter's drops are the frees called
 * from nf_hook_slow() (NF_DROP verdict); `location` is kfree_skb's caller */
#define NF_DROP_PROBE(a) \
    ((u64)(a)->location - NF_HOOK_SLOW >= NF_HOOK_SLOW_SIZE ? 0 : nf_drop((char *)(a)->skbaddr))
#else
#define NF_DROP_PROBE(a) \
    ((a)->reason != REASON_NETFILTER_DROP ? 0 : nf_drop((char *)(a)->skbaddr))
#endif

/* The drop's sequence number in its class on its (netns, cpu); 0: unknown. */
static __always_inline u64 next_seq(struct drop_event *ev)
{
    struct cpu_key ck = {.netns_cookie = ev->netns_cookie, .netns = ev->netns, .cpu = ev->cpu,
                         .ct_attached = ev->ct_attached};
    u64 *seq = drop_seq.lookup(&ck);
    if (seq) {
        /* the key holds the CPU: no other CPU writes it. No fetching atomic
         * (BPF_FETCH needs Linux 5.12; 5.10 refuses "BPF_STX uses reserved fields") */
        *seq += 1;
        return *seq;
    }
    u64 one = 1;
    if (drop_seq.insert(&ck, &one) == 0)
        return 1;
    stat_add(ST_SEQ_FULL);                      /* seq 0: the class cannot be told */
    return 0;
}

static __always_inline int nf_drop(char *skb)
{
    struct drop_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();

    char *ct = skb_ct(skb);
    ev.ct_attached = ct != 0;
#ifdef CT_KPROBES
    ev.kind = KIND_RULE;        /* conntrack's own drops are filtered below */
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
    ev.netns_cookie = net_cookie(net);
    read_skb(&ev, skb);
#ifdef CT_KPROBES
    if (conntrack_own((u64)skb, &ev))
        return 0;               /* conntrack's own refusal: counted by its kprobe */
#endif
    stat_add(ST_NF_DROPS);
    ev.clash_candidate = ev.ct_attached;
#ifdef HAVE_CT_TUPLE
    if (ct) {
        read_orig(&ev, ct + CT_TUPLE);
        /* A clash at confirm drops an unconfirmed entry, at the last hook,
         * after source NAT (which marks even a null binding done). */
        unsigned long status = 0;
        bpf_probe_read_kernel(&status, sizeof(status), ct + CT_STATUS);
        ev.clash_candidate = !(status & IPS_CONFIRMED_) && (status & IPS_SRC_NAT_DONE_);
    }
#endif
    if (!ev.ct_attached)
        stat_add(ST_CTLESS);

    /* numbered: drops that the kernel's counters may claim (see events.h) */
    if (!ev.ct_attached || ev.clash_candidate)
        ev.seq = next_seq(&ev);

    struct drop_key key = {.netns = ev.netns, .family = ev.family, .proto = ev.proto,
                           .ct_attached = ev.ct_attached};
    __builtin_memcpy(key.saddr, ev.has_orig ? ev.osaddr : ev.saddr, 16);
    count_source(&key);

    if (!take_token(ev.ts_ns)) {
        stat_add(ST_SAMPLED_OUT);
        return 0;
    }
    if (send_event(&ev) == 0)
        stat_add(ST_EMITTED);
    else
        stat_add(ST_SUBMIT_FAILED);
    return 0;
}

#endif
