/* cttrace: netfilter drops, from tracepoint skb:kfree_skb (Linux 5.17+ for
 * the drop reason; restricted kernels: no kprobes, no fentry needed).
 *
 * Every skb freed with reason NETFILTER_DROP is counted per source in
 * `sources` (exact) and sent as a drop_event through `events`, at most
 * RATE_PER_SEC per CPU (burst RATE_BURST); the rest are counted in
 * ST_SAMPLED_OUT. Whether a conntrack entry was attached (skb->_nfct) and
 * per-(netns, cpu) sequences of drops with and without one let user space
 * match drops with the kernel's per-CPU counters (tracer/classify.py):
 * without an entry and counted in `drop` (less `insert_failed`): conntrack
 * refused the packet (table full); with one and counted in `insert_failed`:
 * a clash at confirm (NAT port exhaustion, the UDP DNS race); the rest:
 * rules. Where an entry is attached, its original tuple (what the sender
 * used, before NAT) travels with the event and keys the per-source count.
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
struct alloc_arg { u64 net; u64 orig; u8 create; u8 pad[7]; };
struct confirm_arg { u64 skb; u64 ct; };
/* Conntrack's own refusals, counted by its kprobes, waiting for the
 * netfilter drop of their packet (not a rule's): a failed confirm by its
 * skb, a refused new entry (the packet has none; __nf_conntrack_alloc
 * does not see the skb) by its tuple on its CPU. A refusal whose packet
 * is not freed by netfilter (tc act_ct, Open vSwitch drop it their own
 * way) is never matched, and ages out: it cannot swallow a later rule
 * drop, unless of the same tuple on the same CPU within PENDING_NS. */
struct refused_key {
    u32 cpu;
    u8  family;
    u8  proto;
    u16 sport;          /* as read_packet() reads them; 0 where it reads no ports */
    u16 dport;
    u16 pad;
    u8  saddr[16];
    u8  daddr[16];
};
struct pending { u64 ts; u64 n; };
BPF_TABLE("lru_hash", struct refused_key, struct pending, ct_refused, 4096);
BPF_TABLE("lru_hash", u64, u64, ct_failed_skbs, 4096);   /* skb -> ts of its failed confirm */
#define PENDING_NS 1000000000ULL

static __always_inline int has_ports(u8 p)
{
    return p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP || p == IPPROTO_UDPLITE ||
           p == IPPROTO_DCCP || p == IPPROTO_ICMP || p == 58;
}

static __always_inline void refused_key_of(struct refused_key *k, struct drop_event *ev)
{
    k->cpu = ev->cpu;
    k->family = ev->family;
    k->proto = ev->proto;
    if (has_ports(ev->proto)) {
        k->sport = ev->sport;
        k->dport = ev->dport;
    }
    __builtin_memcpy(k->saddr, ev->saddr, 16);
    __builtin_memcpy(k->daddr, ev->daddr, 16);
}

/* Is this netfilter drop one of conntrack's own refusals (already counted)? */
static __always_inline int conntrack_own(u64 skb, struct drop_event *ev)
{
    u64 *t = ct_failed_skbs.lookup(&skb);
    if (t) {
        u64 then = *t;
        ct_failed_skbs.delete(&skb);
        if (ev->ts_ns - then < PENDING_NS)
            return 1;
    }
    if (ev->ct_attached || ev->fragment)
        return 0;
    struct refused_key k = {};
    refused_key_of(&k, ev);
    struct pending *p = ct_refused.lookup(&k);
    if (!p || p->n == 0)
        return 0;
    if (ev->ts_ns - p->ts >= PENDING_NS) {
        ct_refused.delete(&k);
        return 0;
    }
    p->n--;
    if (p->n == 0)
        ct_refused.delete(&k);
    return 1;
}
#endif

BPF_PERF_OUTPUT(events);
BPF_HASH(sources, struct drop_key, u64, 65536);
BPF_HASH(drop_seq, struct cpu_key, u64, 16384);
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

static __always_inline u64 net_cookie(void *net)
{
    u64 cookie = 0;
#if OFF_NET_COOKIE >= 0
    if (net)
        bpf_probe_read_kernel(&cookie, sizeof(cookie), (char *)net + OFF_NET_COOKIE);
#endif
    return cookie;
}

/* The packet's addresses and ports: IPv4 (ports only in the first fragment)
 * or IPv6 after up to 6 extension headers (hop-by-hop, routing,
 * destination options, fragment, AH). */
static __always_inline void read_packet(struct drop_event *ev, char *l3)
{
    u8 vihl = 0;
    bpf_probe_read_kernel(&vihl, 1, l3);
    char *l4 = 0;
    if ((vihl >> 4) == 4) {
        struct iphdr ip = {};
        bpf_probe_read_kernel(&ip, sizeof(ip), l3);
        ev->family = 4;
        ev->proto = ip.protocol;
        __builtin_memcpy(ev->saddr, &ip.saddr, 4);
        __builtin_memcpy(ev->daddr, &ip.daddr, 4);
        if (ntohs(ip.frag_off) & 0x1fff)            /* IP_OFFSET: not the first fragment */
            ev->fragment = 1;
        else
            l4 = l3 + (vihl & 0xf) * 4;
    } else if ((vihl >> 4) == 6) {
        struct ipv6hdr ip6 = {};
        bpf_probe_read_kernel(&ip6, sizeof(ip6), l3);
        ev->family = 6;
        __builtin_memcpy(ev->saddr, &ip6.saddr, 16);
        __builtin_memcpy(ev->daddr, &ip6.daddr, 16);
        u8 next = ip6.nexthdr;
        char *p = l3 + sizeof(ip6);
#pragma unroll
        for (int i = 0; i < 6; i++) {
            u8 h[4] = {};
            if (next == 0 || next == 43 || next == 60) {          /* HBH, routing, dstopts */
                bpf_probe_read_kernel(h, 2, p);
                next = h[0];
                p += ((u32)h[1] + 1) * 8;
            } else if (next == 51) {                              /* AH */
                bpf_probe_read_kernel(h, 2, p);
                next = h[0];
                p += ((u32)h[1] + 2) * 4;
            } else if (next == 44) {                              /* fragment */
                bpf_probe_read_kernel(h, 4, p);
                next = h[0];
                p += 8;
                if (((u16)h[2] << 8 | h[3]) & 0xfff8) {           /* offset != 0 */
                    ev->fragment = 1;
                    break;
                }
            } else {
                break;
            }
        }
        ev->proto = next;
        if (!ev->fragment)
            l4 = p;
    }
    if (!l4)
        return;
    u8 p = ev->proto;
    if (p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP || p == IPPROTO_UDPLITE ||
        p == IPPROTO_DCCP) {
        u16 ports[2] = {};
        bpf_probe_read_kernel(ports, sizeof(ports), l4);
        ev->sport = ntohs(ports[0]);
        ev->dport = ntohs(ports[1]);
    } else if (p == IPPROTO_ICMP || p == 58 /* ICMPv6 */) {
        u8 tc[2] = {};
        bpf_probe_read_kernel(tc, sizeof(tc), l4);
        ev->sport = tc[0];
        ev->dport = tc[1];
    }
}

#ifdef HAVE_CT_TUPLE
/* The original tuple of the attached entry (struct nf_conntrack_tuple). */
static __always_inline void read_orig(struct drop_event *ev, char *t)
{
    u16 l3 = 0, sp = 0, dp = 0;
    bpf_probe_read_kernel(&l3, sizeof(l3), t + T_L3NUM);
    if (l3 != 2 && l3 != 10)
        return;
    bpf_probe_read_kernel(ev->osaddr, 16, t + T_SRC_U3);
    bpf_probe_read_kernel(ev->odaddr, 16, t + T_DST_U3);
    bpf_probe_read_kernel(&sp, sizeof(sp), t + T_SRC_PORT);
    bpf_probe_read_kernel(&dp, sizeof(dp), t + T_DST_PORT);
    u8 proto = 0;
    bpf_probe_read_kernel(&proto, 1, t + T_PROTONUM);
    if (proto == IPPROTO_ICMP || proto == 58) {
        ev->osport = dp & 0xff;                     /* dst.u.icmp = {type, code} */
        ev->odport = dp >> 8;
    } else {
        ev->osport = ntohs(sp);
        ev->odport = ntohs(dp);
    }
    if (l3 == 2) {
        __builtin_memset(ev->osaddr + 4, 0, 12);
        __builtin_memset(ev->odaddr + 4, 0, 12);
    }
    ev->has_orig = 1;
}
#endif

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
    char *skb = (char *)args->skbaddr;
    struct drop_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();

    unsigned long nfct = 0;
    bpf_probe_read_kernel(&nfct, sizeof(nfct), skb + OFF_SKB_NFCT);
    char *ct = (char *)(nfct & ~7UL);              /* NFCT_PTRMASK; untracked: no entry */
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

    char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), skb + OFF_SKB_HEAD);
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + OFF_SKB_NH);
    read_packet(&ev, head + nh);
#ifdef CT_KPROBES
    if (conntrack_own((u64)skb, &ev))
        return 0;               /* conntrack's own refusal: counted by its kprobe */
#endif
    stat_add(ST_DROPS);
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
    if (!ev.ct_attached || ev.clash_candidate) {
        struct cpu_key ck = {.netns_cookie = ev.netns_cookie, .netns = ev.netns, .cpu = ev.cpu,
                             .ct_attached = ev.ct_attached};
        u64 *seq = drop_seq.lookup(&ck);
        if (seq) {
            /* the key holds the CPU: no other CPU writes it. No fetching atomic
             * (BPF_FETCH needs Linux 5.12; 5.10 refuses "BPF_STX uses reserved fields") */
            *seq += 1;
            ev.seq = *seq;
        } else {
            u64 one = 1;
            if (drop_seq.insert(&ck, &one) == 0)
                ev.seq = 1;
            else
                stat_add(ST_SEQ_FULL);              /* seq 0: the class cannot be told */
        }
    }

    struct drop_key key = {.netns = ev.netns, .family = ev.family, .proto = ev.proto,
                           .ct_attached = ev.ct_attached};
    __builtin_memcpy(key.saddr, ev.has_orig ? ev.osaddr : ev.saddr, 16);
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
