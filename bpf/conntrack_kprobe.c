/* cttrace: conntrack's own functions, for full kernels (kprobes; Debian,
 * Ubuntu, RHEL stock kernels). Exact, per entry, with little overhead:
 *   __nf_conntrack_alloc    entry+return: an error return is a table-full
 *                           refusal; the refused tuple is its 3rd argument
 *   nf_conntrack_alloc      entry: ctnetlink's creates (conntrack -I,
 *                           conntrackd) go through it; a full table refusing
 *                           one drops no packet (create_refused, not table_full)
 *   __nf_conntrack_confirm  entry+return: NF_ACCEPT with the same entry,
 *                           now IPS_CONFIRMED, is an insert; with another
 *                           entry a clash resolved; unconfirmed: nothing was
 *                           inserted (a reply-direction packet); NF_DROP an
 *                           insert failure
 *   nf_ct_delete            entry+return: true is a delete (expiry, flush,
 *                           early drop, reset)
 *   (early drops: the deletes made while __nf_conntrack_alloc runs are its
 *   early_drop() evicting entries of a full table; early_drop() itself is
 *   static and inlined on some kernels, e.g. Debian's 5.10, so the alloc
 *   call brackets it)
 * plus skb:kfree_skb for the drops conntrack did not cause, i.e. rule
 * drops (bpf/nf_drop.h, as the tracepoint backend; left out with
 * CT_NO_RULE_HALF, where the kernel has no way to tell netfilter's frees).
 * A refusal's own netfilter drop is recognised there by its skb (confirm)
 * or its tuple and CPU (alloc), within a second (ct_failed_skbs,
 * ct_refused), so a refusal whose packet is dropped elsewhere (act_ct,
 * Open vSwitch) or not at all never hides a later rule drop.
 *
 * Constants from the running kernel's BTF (vmlinux + the nf_conntrack
 * module's): T_* (struct nf_conntrack_tuple), CT_TUPLE (tuple of the
 * original direction in struct nf_conn), CT_NET (nf_conn.ct_net),
 * CT_STATUS and IPS_CONFIRMED_ (nf_conn.status and its bit),
 * OFF_NET_INUM, OFF_SKB_NFCT, RATE_PER_SEC, RATE_BURST (the whole table:
 * tracer/backends/bpfconfig.py).
 */
#include "common.h"
#ifndef HAVE_CT_TUPLE
#error "the conntrack probes need HAVE_CT_TUPLE (struct nf_conn from the BTF)"
#endif

/* Arguments saved at entry for the return probe. */
struct alloc_arg { u64 net; u64 orig; u8 create; u8 pad[7]; };
struct confirm_arg { u64 skb; u64 ct; };

#ifndef CT_NO_RULE_HALF
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
BPF_TABLE("lru_hash", struct refused_key, struct pending, ct_refused, PENDING_MAX);
BPF_TABLE("lru_hash", u64, u64, ct_failed_skbs, PENDING_MAX);   /* skb -> ts of its failed confirm */
#define PENDING_NS NS_PER_SEC

static __always_inline void refused_key_of(struct refused_key *k, struct drop_event *ev)
{
    k->cpu = ev->cpu;
    k->family = ev->family;
    k->proto = ev->proto;
    if (has_ports(ev->proto) || is_icmp(ev->proto)) {
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

#define CT_KPROBES 1
#include "nf_drop.h"

TRACEPOINT_PROBE(skb, kfree_skb)
{
    return NF_DROP_PROBE(args);
}
#endif /* CT_NO_RULE_HALF */

BPF_HASH(ct_sources, struct src_key, struct src_val, SOURCES_MAX);
BPF_PERCPU_ARRAY(ct_stats, u64, CT_MAX);
/* Arguments saved at entry for the return probe, keyed by (task, CPU,
 * depth). The packet path does not migrate between entry and return. In
 * softirq context the "task" is whatever ran on that CPU, often the idle
 * task, whose pid_tgid is 0 on every CPU: hence the CPU. A softirq can
 * run inside a task's call on the same CPU (a locally sent packet's
 * confirm, interrupted before it disables bottom halves) and then has the
 * same (task, CPU): hence the depth, the calls of that function in flight
 * on the CPU, which nest and unnest in order. A return the kernel skips
 * (no free kretprobe instance) leaves the depth one higher: entry and
 * return still agree (both offset), and its record ages out of the LRU. */
struct call_key { u64 id; u32 cpu; u32 depth; };
BPF_TABLE("lru_hash", struct call_key, struct alloc_arg, alloc_args, CALLS_MAX);
BPF_TABLE("lru_hash", struct call_key, struct confirm_arg, confirm_args, CALLS_MAX);
BPF_TABLE("lru_hash", struct call_key, u64, delete_args, CALLS_MAX);
enum { FN_ALLOC, FN_CONFIRM, FN_DELETE, FN_MAX };
#define DEPTH_MASK 7
BPF_PERCPU_ARRAY(call_depth, u32, FN_MAX);
/* nf_conntrack_alloc() (ctnetlink's creates: conntrack -I, conntrackd)
 * is about to call __nf_conntrack_alloc at this depth + 1; 0: not */
BPF_PERCPU_ARRAY(create_at, u32, 1);

static __always_inline struct call_key call_enter(int fn)
{
    struct call_key k = {.id = bpf_get_current_pid_tgid(), .cpu = bpf_get_smp_processor_id()};
    u32 *d = call_depth.lookup(&fn);
    if (d) {
        k.depth = *d;
        *d = (*d + 1) & DEPTH_MASK;
    }
    return k;
}

static __always_inline struct call_key call_leave(int fn)
{
    struct call_key k = {.id = bpf_get_current_pid_tgid(), .cpu = bpf_get_smp_processor_id()};
    u32 *d = call_depth.lookup(&fn);
    if (d) {
        *d = (*d - 1) & DEPTH_MASK;
        k.depth = *d;
    }
    return k;
}

static __always_inline u32 depth_of(int fn)
{
    u32 *d = call_depth.lookup(&fn);
    return d ? *d : 0;
}

static __always_inline void ct_stat(int i)
{
    u64 *v = ct_stats.lookup(&i);
    if (v)
        (*v)++;
}

static __always_inline u32 ct_inum(char *ct)
{
    void *net = 0;
    bpf_probe_read_kernel(&net, sizeof(net), ct + CT_NET);
    return net_inum(net);
}

static __always_inline struct src_val *source(struct drop_event *ev)
{
    struct src_key k = {.netns = ev->netns, .family = ev->family};
    __builtin_memcpy(k.addr, ev->saddr, 16);
    struct src_val *v = ct_sources.lookup(&k);
    if (v)
        return v;
    struct src_val zero = {};
    if (ct_sources.insert(&k, &zero) != 0 && !ct_sources.lookup(&k)) {
        ct_stat(CT_KEYS_FULL);
        return 0;
    }
    return ct_sources.lookup(&k);
}

static __always_inline void emit(struct pt_regs *ctx, struct drop_event *ev)
{
    if (!take_token(ev->ts_ns)) {
        ct_stat(CT_SAMPLED_OUT);
        return;
    }
    if (send_event(ev) == 0)
        ct_stat(CT_EMITTED);
    else
        ct_stat(CT_SUBMIT_FAILED);
}

int create_entry(struct pt_regs *ctx)
{
    int z = 0;
    u32 *at = create_at.lookup(&z);
    if (at)
        *at = depth_of(FN_ALLOC) + 1;
    return 0;
}

int alloc_entry(struct pt_regs *ctx)
{
    struct alloc_arg a = {.net = PT_REGS_PARM1(ctx), .orig = PT_REGS_PARM3(ctx)};
    int z = 0;
    u32 *at = create_at.lookup(&z);
    if (at && *at && *at == depth_of(FN_ALLOC) + 1) {
        a.create = 1;                   /* ctnetlink's, not a packet's */
        *at = 0;
    }
    struct call_key id = call_enter(FN_ALLOC);
    alloc_args.update(&id, &a);
    return 0;
}

int alloc_return(struct pt_regs *ctx)
{
    struct call_key id = call_leave(FN_ALLOC);
    struct alloc_arg *a = alloc_args.lookup(&id);
    if (!a) {
        ct_stat(CT_ARGS_MISSED);
        return 0;
    }
    unsigned long ret = PT_REGS_RC(ctx);
    int refused = ret >= (unsigned long)-ERR_MAX;   /* IS_ERR: the table refused it */
    if (refused && a->create) {
        ct_stat(CT_CREATE_REFUSED);     /* no packet: not a drop */
    } else if (refused) {
        struct drop_event ev = {};
        ev.ts_ns = bpf_ktime_get_ns();
        ev.cpu = bpf_get_smp_processor_id();
        ev.kind = KIND_TABLE_FULL;
        ev.netns = net_inum((void *)a->net);
        read_ct_tuple(&ev, (char *)a->orig);
        ct_stat(CT_TABLE_FULL);
        struct src_val *v = source(&ev);
        if (v)
            __sync_fetch_and_add(&v->table_full, 1);
#ifndef CT_NO_RULE_HALF
        /* its packet's netfilter drop is not a rule's */
        struct refused_key k = {};
        refused_key_of(&k, &ev);
        struct pending *p = ct_refused.lookup(&k);
        if (p && ev.ts_ns - p->ts < PENDING_NS) {
            p->n++;
            p->ts = ev.ts_ns;
        } else {
            struct pending one = {.ts = ev.ts_ns, .n = 1};
            ct_refused.update(&k, &one);
        }
#endif
        emit(ctx, &ev);
    }
    alloc_args.delete(&id);
    return 0;
}

int confirm_entry(struct pt_regs *ctx)
{
    struct call_key id = call_enter(FN_CONFIRM);
    char *skb = (char *)PT_REGS_PARM1(ctx);
    struct confirm_arg c = {.skb = (u64)skb, .ct = (u64)skb_ct(skb)};
    confirm_args.update(&id, &c);
    return 0;
}

int confirm_return(struct pt_regs *ctx)
{
    struct call_key id = call_leave(FN_CONFIRM);
    struct confirm_arg *c = confirm_args.lookup(&id);
    if (!c) {
        ct_stat(CT_ARGS_MISSED);
        return 0;
    }
    int verdict = PT_REGS_RC(ctx);
    char *ct = (char *)c->ct;
    struct drop_event ev = {};
    ev.netns = ct_inum(ct);
    read_ct_tuple(&ev, ct + CT_TUPLE);
    if (verdict == VERDICT_ACCEPT) {
        unsigned long status = 0;
        bpf_probe_read_kernel(&status, sizeof(status), ct + CT_STATUS);
        if ((u64)skb_ct((char *)c->skb) != c->ct) {
            ct_stat(CT_CLASH_RESOLVED);             /* the packet now uses the entry it clashed with */
        } else if (!(status & IPS_CONFIRMED_)) {
            ct_stat(CT_NOT_INSERTED);               /* a reply-direction packet: nothing inserted */
        } else {
            ct_stat(CT_INSERTS);
            struct src_val *v = source(&ev);
            if (v)
                __sync_fetch_and_add(&v->inserts, 1);
        }
    } else {                                        /* NF_DROP: insert failed */
        ev.ts_ns = bpf_ktime_get_ns();
        ev.cpu = bpf_get_smp_processor_id();
        ev.kind = KIND_INSERT_FAILED;
        ct_stat(CT_INSERT_FAILED);
        struct src_val *v = source(&ev);
        if (v)
            __sync_fetch_and_add(&v->insert_failed, 1);
#ifndef CT_NO_RULE_HALF
        u64 skb = c->skb;                           /* its netfilter drop is not a rule's */
        ct_failed_skbs.update(&skb, &ev.ts_ns);
#endif
        /* as the tracepoint backend sends it: the sender's tuple (the
         * entry's original) and the packet as dropped (after NAT) */
        ev.has_orig = 1;
        ev.ct_attached = 1;
        ev.clash_candidate = 1;
        __builtin_memcpy(ev.osaddr, ev.saddr, 16);
        __builtin_memcpy(ev.odaddr, ev.daddr, 16);
        ev.osport = ev.sport;
        ev.odport = ev.dport;
        read_skb(&ev, (char *)c->skb);
        emit(ctx, &ev);
    }
    confirm_args.delete(&id);
    return 0;
}

int delete_entry(struct pt_regs *ctx)
{
    struct call_key id = call_enter(FN_DELETE);
    u64 ct = PT_REGS_PARM1(ctx);
    delete_args.update(&id, &ct);
    return 0;
}

int delete_return(struct pt_regs *ctx)
{
    struct call_key id = call_leave(FN_DELETE);
    u64 *ctp = delete_args.lookup(&id);
    if (!ctp) {
        ct_stat(CT_ARGS_MISSED);
        return 0;
    }
    if ((u8)PT_REGS_RC(ctx)) {                      /* bool: it was this call that killed it */
        struct drop_event ev = {};
        ev.netns = ct_inum((char *)*ctp);
        read_ct_tuple(&ev, (char *)*ctp + CT_TUPLE);
        ct_stat(CT_DELETES);
        if (depth_of(FN_ALLOC))                     /* inside __nf_conntrack_alloc: early_drop() */
            ct_stat(CT_EARLY_DROPS);
        struct src_val *v = source(&ev);
        if (v)
            __sync_fetch_and_add(&v->deletes, 1);
    }
    delete_args.delete(&id);
    return 0;
}
