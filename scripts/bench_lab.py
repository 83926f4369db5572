#!/usr/bin/env python3
"""Benchmark: the lab's maximum new-flow rate on this machine (not a test).

  sudo .venv/bin/python scripts/bench_lab.py [--flows 20000] [--workers 2]

Brings the lab up, then for each kind of flow (UDP query/answer, short TCP
connections) runs one generator process per container, as fast as it can,
and reports the aggregate rate of new conntrack entries the node created
(checked against the node's nf_conntrack_count). This is the baseline for
measuring the tracer's overhead: rerun with a tracer attached and compare.
"""

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import lab as L  # noqa: E402


_LAB = None     # inherited by the forked workers


def _work(args):
    kind, container, n = args
    gen = _LAB.udp_flows if kind == "udp" else _LAB.tcp_short
    r = gen(container, n)
    return len(r.flows), len(r.failed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=20000, help="flows per kind (split across workers)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    L.lab_down("ctbench-")
    global _LAB
    with L.Lab(containers=a.workers, prefix="ctbench-") as lab:
        _LAB = lab
        ctx = mp.get_context("fork")
        for kind in ("udp", "tcp_short"):
            before = lab.node_count()
            per = a.flows // a.workers
            t0 = time.perf_counter()
            with ctx.Pool(a.workers) as pool:
                res = pool.map(_work, [(kind, c, per) for c in lab.containers])
            dt = time.perf_counter() - t0
            ok = sum(r[0] for r in res)
            failed = sum(r[1] for r in res)
            made = lab.node_count() - before
            print(f"{kind:9s}: {ok:,} flows ({failed} failed) by {a.workers} workers in {dt:.2f} s "
                  f"= {ok / dt:,.0f} new flows/s; node table +{made:,}")


if __name__ == "__main__":
    main()
