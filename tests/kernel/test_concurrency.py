"""The kprobe backend under real concurrency: several senders, each pinned
to its own CPU, open new UDP flows at once into a node whose table is full,
while one of them also sends packets a raw-table rule drops. Repeated, to
catch the intermittent: every event of the scene must carry the node's
namespace, the refused tuples must be the flows that got no answer, and
the counts must be the kernel's.

The table is made full of assured TCP connections (ESTABLISHED: early_drop
never evicts them), so every new flow is refused and no eviction changes
which flows fail."""

import os
import pickle

from tests import lab as L
from tests.kernel.test_kprobe import drain, src_counts

SENDERS = 4
FLOWS = 40          # per sender and round
RULE_PORT = 5354
ROUNDS = 3
HELD = 10


def _send(lab, container, cpu, count, dst, w):
    """Child: pinned to `cpu`, `count` UDP flows from `container`; the
    (ok, failed) flows go back pickled through `w`."""
    try:
        os.sched_setaffinity(0, {cpu})
        rep = lab.udp_flows(container, count, timeout=0.3, dst=dst)
        data = pickle.dumps((rep.flows, rep.failed))
        os.write(w, data)
    finally:
        os._exit(0)


def _concurrently(lab, jobs):
    """Run (container, count, dst) jobs at once, one process per CPU."""
    ncpu = os.cpu_count() or 1
    procs = []
    for i, (c, count, dst) in enumerate(jobs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _send(lab, c, i % ncpu, count, dst, w)
        os.close(w)
        procs.append((pid, r))
    out = []
    for pid, r in procs:
        chunks = []
        while True:
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        os.waitpid(pid, 0)
        assert chunks, "a sender died"
        out.append(pickle.loads(b"".join(chunks)))
    return out


def test_concurrent_senders_table_full_exact_namespace(backend, lab4):
    lab = lab4
    node = os.stat(f"/run/netns/{lab.node}").st_ino
    assert (os.cpu_count() or 1) >= SENDERS, "the VM stage boots 4 vCPUs"
    # the table: HELD assured connections and nothing else may enter
    est = lab.tcp_established(lab.containers[0], HELD)
    assert len(est.flows) == HELD
    L.sh("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", str(RULE_PORT),
         "-j", "DROP", ns=lab.node)
    ct_max = "/proc/sys/net/netfilter/nf_conntrack_max"
    old = open(ct_max).read().strip()
    lab.save_sysctl(ct_max, old)
    try:
        for rnd in range(ROUNDS):
            drain(backend)
            c0, k0 = backend.counters(), lab.node_stats()
            with open(ct_max, "w") as f:
                f.write(str(lab.node_count()))
            jobs = [(c, FLOWS, (L.UPLINK_PEER, L.UDP_PORT)) for c in lab.containers]
            jobs[1] = (lab.containers[1], 5, (L.UPLINK_PEER, RULE_PORT))   # rule drops
            got = _concurrently(lab, jobs)
            with open(ct_max, "w") as f:
                f.write(old)
            events = drain(backend, quiet=1.0)
            c1, k1 = backend.counters(), lab.node_stats()

            refused = [f for i, (ok, failed) in enumerate(got) if i != 1 for f in failed]
            ruled = got[1][1]
            assert not any(ok for i, (ok, _) in enumerate(got)), f"round {rnd}: a flow got in"
            assert len(ruled) == 5 and len(refused) == FLOWS * (SENDERS - 1)
            scene = {(f.proto, f.src, f.sport, f.dst, f.dport) for f in refused + ruled}
            mine = [e for e in events if (e.proto, e.src, e.sport, e.dst, e.dport) in scene]
            wrong = [(e.reason, e.netns, e.src, e.sport) for e in mine if e.netns != node]
            assert not wrong, f"round {rnd}: events with another netns than {node}: {wrong[:5]}"
            full = [e for e in events if e.reason == "table_full" and e.netns == node]
            assert sorted((e.src, e.sport) for e in full) == sorted((f.src, f.sport) for f in refused)
            rules = [e for e in events if e.reason == "rule" and e.netns == node]
            assert sorted((e.src, e.sport) for e in rules) == sorted((f.src, f.sport) for f in ruled)
            assert k1["drop"] - k0["drop"] == len(refused)
            assert k1["early_drop"] == k0["early_drop"]
            for c in lab.containers:
                src = lab.container_ip(c)
                b, a = src_counts(c0, node, src), src_counts(c1, node, src)
                want = 0 if c == lab.containers[1] else FLOWS
                assert a["table_full"] - b["table_full"] == want, (rnd, c)
                assert a["inserts"] == b["inserts"], (rnd, c)
            assert c1.lost == 0
    finally:
        with open(ct_max, "w") as f:
            f.write(old)
        lab.forget_sysctl(ct_max)
        lab.release()
