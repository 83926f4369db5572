/* cttrace: what both BPF programs share: the configuration they need, the
 * kernel constants they use (each with the kernel file it comes from), the
 * maps of the drop half and the helpers that read packets, conntrack tuples
 * and namespaces.
 *
 * Configuration: -D flags built by tracer/backends/bpfconfig.py, whose table
 * documents each flag (meaning, required or not); the required ones are
 * checked here with #error, so a missing or misspelt one stops the compile.
 */
#ifndef CTTRACE_COMMON_H
#define CTTRACE_COMMON_H

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

/* --- required configuration (tracer/backends/bpfconfig.py) --------------- */
#ifndef OFF_SKB_HEAD
#error "OFF_SKB_HEAD (offset of sk_buff.head) is required"
#endif
#ifndef OFF_SKB_NH
#error "OFF_SKB_NH (offset of sk_buff.network_header) is required"
#endif
#ifndef OFF_SKB_NFCT
#error "OFF_SKB_NFCT (offset of sk_buff._nfct) is required"
#endif
#ifndef OFF_SKB_DEV
#error "OFF_SKB_DEV (offset of sk_buff.dev) is required"
#endif
#ifndef OFF_SKB_SK
#error "OFF_SKB_SK (offset of sk_buff.sk) is required"
#endif
#ifndef OFF_DEV_NET
#error "OFF_DEV_NET (offset of net_device.nd_net) is required"
#endif
#ifndef OFF_SK_NET
#error "OFF_SK_NET (offset of sock.__sk_common.skc_net) is required"
#endif
#ifndef OFF_NET_INUM
#error "OFF_NET_INUM (offset of net.ns.inum) is required"
#endif
#ifndef OFF_NET_COOKIE
#error "OFF_NET_COOKIE (offset of net.net_cookie, -1 where the kernel has none) is required"
#endif
#ifndef RATE_PER_SEC
#error "RATE_PER_SEC (events per second and CPU) is required"
#endif
#ifndef RATE_BURST
#error "RATE_BURST (events in a burst per CPU) is required"
#endif
#ifndef RINGBUF_PAGES
#error "RINGBUF_PAGES (pages of the event ring buffer, a power of 2) is required"
#endif
#if defined(HAVE_CT_TUPLE) && !(defined(T_SRC_U3) && defined(T_SRC_PORT) && defined(T_L3NUM) && \
    defined(T_DST_U3) && defined(T_DST_PORT) && defined(T_PROTONUM) && defined(CT_TUPLE) && \
    defined(CT_NET) && defined(CT_STATUS) && defined(IPS_CONFIRMED_) && defined(IPS_SRC_NAT_DONE_))
#error "HAVE_CT_TUPLE needs T_*, CT_TUPLE, CT_NET, CT_STATUS, IPS_CONFIRMED_ and IPS_SRC_NAT_DONE_"
#endif

/* --- kernel constants ------------------------------------------------------ */
#define CT_PTRMASK      (~7UL)  /* NFCT_PTRMASK, include/linux/skbuff.h: skb->_nfct's info bits */
#define ERR_MAX         4095    /* MAX_ERRNO, include/linux/err.h: IS_ERR(p) is p >= -MAX_ERRNO */
#define VERDICT_ACCEPT  1       /* NF_ACCEPT, include/uapi/linux/netfilter.h (NF_DROP is 0) */
#define FAMILY_INET     2       /* AF_INET, include/linux/socket.h (nf_conntrack_tuple.src.l3num) */
#define FAMILY_INET6    10      /* AF_INET6 */
#define PROTO_ICMPV6    58      /* IPPROTO_ICMPV6, include/uapi/linux/in6.h */
#define IP_FRAG_OFFSET  0x1fff  /* IP_OFFSET, include/net/ip.h: fragment offset bits of frag_off */
#define IP6_FRAG_OFFSET 0xfff8  /* IP6_OFFSET, include/net/ipv6.h */
#define NEXTHDR_HOP_    0       /* include/net/ipv6.h: hop-by-hop options */
#define NEXTHDR_ROUTING_ 43
#define NEXTHDR_FRAG_   44
#define NEXTHDR_AUTH_   51
#define NEXTHDR_DEST_   60
#define IP6_EXT_MAX     6       /* extension headers walked before giving up (the verifier bounds it) */
#define NS_PER_SEC      1000000000ULL

/* Protocols whose first 4 bytes after the IP header are two ports
 * (nf_conntrack_tuple.{src,dst}.u.all) */
static __always_inline int has_ports(u8 p)
{
    return p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP || p == IPPROTO_UDPLITE ||
           p == IPPROTO_DCCP;
}

static __always_inline int is_icmp(u8 p)
{
    return p == IPPROTO_ICMP || p == PROTO_ICMPV6;
}

/* --- maps of the drop half ------------------------------------------------- */
/* One ring buffer (Linux 5.8+) for every event of either program: shared by
 * all CPUs, in order; a full ring counts ST_SUBMIT_FAILED (shown as lost). */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_HASH(sources, struct drop_key, u64, SOURCES_MAX);
/* LRU: namespaces come and go; the least recently used (gone) ones give
 * their place, and user space keeps the last count it read of each key. */
BPF_TABLE("lru_hash", struct cpu_key, u64, drop_seq, DROP_SEQ_MAX);
BPF_PERCPU_ARRAY(stats, u64, ST_MAX);
BPF_PERCPU_ARRAY(bucket, u64, 2);      /* [0] tokens (scaled by NS_PER_SEC), [1] last refill ns */

static __always_inline void stat_add(int i)
{
    u64 *v = stats.lookup(&i);
    if (v)
        (*v)++;
}

/* A token of the per-CPU event rate (RATE_PER_SEC, burst RATE_BURST). */
static __always_inline int take_token(u64 now)
{
    int k0 = 0, k1 = 1;
    u64 *tokens = bucket.lookup(&k0), *last = bucket.lookup(&k1);
    if (!tokens || !last)
        return 0;
    /* tokens are scaled by NS_PER_SEC so that refill = elapsed_ns * rate */
    u64 cap = (u64)RATE_BURST * NS_PER_SEC;
    u64 t = *tokens + (now - *last) * (u64)RATE_PER_SEC;
    if (t > cap || *last == 0)
        t = cap;
    *last = now;
    if (t < NS_PER_SEC) {
        *tokens = t;
        return 0;
    }
    *tokens = t - NS_PER_SEC;
    return 1;
}

/* Send an event through the ring; `failed` counts a full ring. */
static __always_inline int send_event(struct drop_event *ev)
{
    return events.ringbuf_output(ev, sizeof(*ev), 0);
}

/* Count one drop of a source: insert-if-absent, then an atomic add, so two
 * CPUs counting a source's first drop both count. */
static __always_inline void count_source(struct drop_key *key)
{
    u64 *cnt = sources.lookup(key);
    if (!cnt) {
        u64 zero = 0;
        sources.insert(key, &zero);     /* BPF_NOEXIST: loses no racing count */
        cnt = sources.lookup(key);
    }
    if (cnt)
        __sync_fetch_and_add(cnt, 1);
    else
        stat_add(ST_KEYS_FULL);
}

/* --- namespaces ------------------------------------------------------------ */
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

/* The conntrack entry attached to a packet (skb->_nfct), 0 if none. */
static __always_inline char *skb_ct(char *skb)
{
    unsigned long nfct = 0;
    bpf_probe_read_kernel(&nfct, sizeof(nfct), skb + OFF_SKB_NFCT);
    return (char *)(nfct & CT_PTRMASK);             /* untracked: no entry */
}

/* --- packets --------------------------------------------------------------- */
/* The packet's addresses and ports: IPv4 (ports only in the first fragment)
 * or IPv6 after up to IP6_EXT_MAX extension headers (hop-by-hop, routing,
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
        if (ntohs(ip.frag_off) & IP_FRAG_OFFSET)    /* not the first fragment */
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
        for (int i = 0; i < IP6_EXT_MAX; i++) {
            u8 h[4] = {};
            if (next == NEXTHDR_HOP_ || next == NEXTHDR_ROUTING_ || next == NEXTHDR_DEST_) {
                bpf_probe_read_kernel(h, 2, p);
                next = h[0];
                p += ((u32)h[1] + 1) * 8;
            } else if (next == NEXTHDR_AUTH_) {
                bpf_probe_read_kernel(h, 2, p);
                next = h[0];
                p += ((u32)h[1] + 2) * 4;
            } else if (next == NEXTHDR_FRAG_) {
                bpf_probe_read_kernel(h, 4, p);
                next = h[0];
                p += 8;
                if (((u16)h[2] << 8 | h[3]) & IP6_FRAG_OFFSET) {   /* offset != 0 */
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
    if (has_ports(p)) {
        u16 ports[2] = {};
        bpf_probe_read_kernel(ports, sizeof(ports), l4);
        ev->sport = ntohs(ports[0]);
        ev->dport = ntohs(ports[1]);
    } else if (is_icmp(p)) {
        u8 tc[2] = {};
        bpf_probe_read_kernel(tc, sizeof(tc), l4);
        ev->sport = tc[0];
        ev->dport = tc[1];
    }
}

/* The packet of an skb (skb->head + skb->network_header). */
static __always_inline void read_skb(struct drop_event *ev, char *skb)
{
    char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), skb + OFF_SKB_HEAD);
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + OFF_SKB_NH);
    if (head)
        read_packet(ev, head + nh);
}

#ifdef HAVE_CT_TUPLE
/* A conntrack tuple (struct nf_conntrack_tuple at t) in the form an event
 * carries it: family 4/6 (0 if not IP: nothing else is read), protocol,
 * addresses (IPv4 in the first 4 bytes, the rest zero), ports in host
 * order (ICMP: type and code). */
struct tuple_out { u8 *family; u8 *proto; u8 *saddr; u8 *daddr; u16 *sport; u16 *dport; };

static __always_inline int read_tuple(struct tuple_out o, char *t)
{
    u16 l3 = 0, sp = 0, dp = 0;
    bpf_probe_read_kernel(&l3, sizeof(l3), t + T_L3NUM);
    *o.family = l3 == FAMILY_INET ? 4 : l3 == FAMILY_INET6 ? 6 : 0;
    if (!*o.family)
        return 0;
    bpf_probe_read_kernel(o.proto, 1, t + T_PROTONUM);
    bpf_probe_read_kernel(o.saddr, 16, t + T_SRC_U3);
    bpf_probe_read_kernel(o.daddr, 16, t + T_DST_U3);
    bpf_probe_read_kernel(&sp, sizeof(sp), t + T_SRC_PORT);
    bpf_probe_read_kernel(&dp, sizeof(dp), t + T_DST_PORT);
    if (is_icmp(*o.proto)) {
        *o.sport = dp & 0xff;                       /* dst.u.icmp = {type, code} */
        *o.dport = dp >> 8;
    } else {
        *o.sport = ntohs(sp);
        *o.dport = ntohs(dp);
    }
    if (*o.family == 4) {
        __builtin_memset(o.saddr + 4, 0, 12);
        __builtin_memset(o.daddr + 4, 0, 12);
    }
    return 1;
}

/* The entry's tuple as the event's own (the kprobe backend's events). */
static __always_inline void read_ct_tuple(struct drop_event *ev, char *t)
{
    struct tuple_out o = {&ev->family, &ev->proto, ev->saddr, ev->daddr, &ev->sport, &ev->dport};
    read_tuple(o, t);
}

/* The attached entry's original tuple (what the sender used, pre-NAT). */
static __always_inline void read_orig(struct drop_event *ev, char *t)
{
    u8 family = 0, proto = 0;
    struct tuple_out o = {&family, &proto, ev->osaddr, ev->odaddr, &ev->osport, &ev->odport};
    ev->has_orig = read_tuple(o, t);
}
#endif

#endif
