/* cttrace: netfilter drops, from tracepoint skb:kfree_skb, for restricted
 * kernels (no kprobes, no fentry needed): the tracepoint backend
 * (tracer/backends/tracepoint.py). What it does: bpf/nf_drop.h; what it
 * shares with the kprobe program: bpf/common.h; its configuration:
 * tracer/backends/bpfconfig.py.
 */
#include "nf_drop.h"

TRACEPOINT_PROBE(skb, kfree_skb)
{
    return NF_DROP_PROBE(args);
}
