/* cttrace: the one definition of what the kernel side sends to user space:
 * the event, the map keys and values, their enums and the map sizes.
 * The Python side (tracer/backends/abi.py) is generated from this file by
 * scripts/gen-abi: run it after a change here (a unit test fails while it
 * is stale, and the backends check the layouts BCC compiled at start).
 */
#ifndef CTTRACE_EVENTS_H
#define CTTRACE_EVENTS_H

/* Map sizes (entries) */
#define SOURCES_MAX   65536     /* sources, ct_sources: per (netns, source) counters */
#define DROP_SEQ_MAX  16384     /* drop_seq: per (netns, cpu, class) sequences (LRU) */
#define CALLS_MAX     16384     /* alloc/confirm/delete_args: calls in flight (LRU) */
#define PENDING_MAX   4096      /* ct_refused, ct_failed_skbs: refusals awaiting their drop (LRU) */

/* One packet dropped by netfilter (skb:kfree_skb, reason NETFILTER_DROP),
 * or refused by conntrack (kprobe backend). */
struct drop_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() */
    u64 seq;            /* drops so far of this one's class (ct attached or not) on this
                           (netns, cpu), this one included; 0: unknown (sequence map full) */
    u64 netns_cookie;   /* net->net_cookie (never reused, unlike inodes); 0 if unknown */
    u32 netns;          /* network namespace inode, 0 if unknown */
    u32 cpu;
    u8  family;         /* 4, 6, or 0 if not IP */
    u8  proto;          /* IPPROTO_* (after IPv6 extension headers) */
    u8  ct_attached;    /* the packet had a conntrack entry when dropped */
    u8  kind;           /* KIND_*: what the kernel side saw */
    u16 sport;          /* host order; ICMP: type; 0 in non-first fragments */
    u16 dport;          /* host order; ICMP: code */
    u8  saddr[16];      /* the packet as dropped; IPv4 in the first 4 bytes */
    u8  daddr[16];
    u8  has_orig;       /* o*: the entry's original tuple (what the sender used, pre-NAT) */
    u8  fragment;       /* 1: a non-first fragment (no transport header) */
    u8  clash_candidate;/* an unconfirmed entry past source NAT: a clash at confirm is possible */
    u8  pad;
    u16 osport;
    u16 odport;
    u8  osaddr[16];
    u8  odaddr[16];
};

/* drop_event.kind */
enum {
    KIND_NF_DROP = 0,       /* skb:kfree_skb NETFILTER_DROP (reason decided in user space) */
    KIND_TABLE_FULL = 1,    /* kretprobe __nf_conntrack_alloc returned an error */
    KIND_INSERT_FAILED = 2, /* kretprobe __nf_conntrack_confirm returned NF_DROP */
    KIND_RULE = 3,          /* netfilter drop that conntrack did not cause (kprobe backend) */
};

/* Exact per-source counters of the kprobe backend. */
struct src_key {
    u32 netns;
    u8  family;
    u8  pad[3];
    u8  addr[16];
};

struct src_val {
    u64 inserts;
    u64 deletes;
    u64 table_full;
    u64 insert_failed;
};

/* Indexes of the kprobe backend's `ct_stats` array. */
enum {
    CT_TABLE_FULL = 0,
    CT_INSERTS,
    CT_INSERT_FAILED,
    CT_DELETES,
    CT_EARLY_DROPS,
    CT_CLASH_RESOLVED,       /* confirm accepted the packet on an existing entry */
    CT_EMITTED,
    CT_SAMPLED_OUT,
    CT_SUBMIT_FAILED,
    CT_KEYS_FULL,
    CT_ARGS_MISSED,          /* a return without its entry record */
    CT_CREATE_REFUSED,       /* a full table refused a ctnetlink create (conntrack -I,
                                conntrackd): no packet, not in the kernel's `drop` */
    CT_NOT_INSERTED,         /* confirm accepted a packet without inserting its entry
                                (a reply-direction packet of an unconfirmed entry) */
    CT_MAX,
};

/* Exact per-source drop counters, whatever the event sampling; the source
 * is the entry's original source where an entry is attached (the pod
 * behind a NAT), the packet's otherwise. */
struct drop_key {
    u32 netns;
    u8  family;
    u8  proto;
    u8  ct_attached;
    u8  pad;
    u8  saddr[16];
};

/* Sequence numbers of drops per (netns, cpu, class): class 0 without a
 * conntrack entry, 1 with an entry that may have clashed at confirm
 * (unconfirmed, past source NAT); user space matches them with the kernel's
 * per-CPU `drop` and `insert_failed` counters. Other drops with an entry
 * (confirmed, or before source NAT) are rules' and need no number. */
struct cpu_key {
    u64 netns_cookie;   /* 0 where the kernel has no cookie */
    u32 netns;          /* inode */
    u16 cpu;
    u8  ct_attached;
    u8  pad;
};

/* Indexes of the `stats` array. */
enum {
    ST_NF_DROPS = 0,     /* netfilter drops seen (every cause) */
    ST_CTLESS,           /* ... of which without a conntrack entry */
    ST_EMITTED,          /* events written to the ring buffer */
    ST_SAMPLED_OUT,      /* events not sent: over the per-CPU rate */
    ST_SUBMIT_FAILED,    /* ringbuf_output errors (ring full): events lost */
    ST_KEYS_FULL,        /* per-source map full: counted in ST_NF_DROPS only */
    ST_SEQ_FULL,         /* sequence map full: the drop's class cannot be told (seq 0) */
    ST_MAX,
};

#endif
