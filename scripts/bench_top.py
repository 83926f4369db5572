#!/usr/bin/env python3
"""Benchmark `cttrace top` (not a test).

  sudo .venv/bin/python scripts/bench_top.py [--events 500000] [--flood 5]
  sudo .venv/bin/python scripts/bench_top.py --baseline ../base-tree --rounds 3

1. Aggregation: how many conntrack events per second the pure state
   (tracer/core/aggregate.LiveTable) takes in Python: inserts, state updates and
   deletes of distinct entries, as ctnetlink rows.
2. CPU of `cttrace top --json` on the lab's node: idle, then during a
   table-full flood (every container sending to new ports as fast as it
   can), as utime+stime of its process over wall time; and whether its exact
   table-full total equals the kernel's `drop` delta.

--baseline TREE runs the same against TREE's cttrace (a worktree of another
commit with its own .venv) in the same lab, alternating round by round,
and prints ratios ours/baseline with their spread.
"""

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import lab as L  # noqa: E402

CTTRACE = str(ROOT / ".venv" / "bin" / "cttrace")
_LAB = None


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def _flood(a):
    c, secs, base = a
    return _LAB.flood(c, secs, base).requested


def run_top(cttrace: str, lab, a) -> dict:
    """One `top --json` on the lab's node: CPU idle, CPU under a table-full
    flood, and its exact table-full total against the kernel's."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        out = open(Path(tmp) / "out", "w+")
        p = subprocess.Popen([cttrace, "top", "--json", "--netns", lab.node, "--interval", "1",
                              "--ready-file", str(ready)], stdout=out, stderr=subprocess.DEVNULL)
        while not ready.exists():
            if p.poll() is not None:
                sys.exit(f"bench: {cttrace} top did not start")
            time.sleep(0.05)
        time.sleep(1)
        c0, t0 = cpu(p.pid), time.perf_counter()
        time.sleep(a.idle)
        idle = (cpu(p.pid) - c0) / (time.perf_counter() - t0)
        old = Path(L.CT_MAX).read_text().strip()
        before = lab.node_stats()
        lab.save_sysctl(L.CT_MAX, old)
        try:
            Path(L.CT_MAX).write_text(str(max(lab.node_count(), 1)))
            c0, t0 = cpu(p.pid), time.perf_counter()
            with mp.get_context("fork").Pool(2) as pool:
                sent = sum(pool.map(_flood, [(c, a.flood, 20000 + 1000 * i) for i, c in enumerate(lab.containers)]))
            wall = time.perf_counter() - t0
            busy = (cpu(p.pid) - c0) / wall
        finally:
            Path(L.CT_MAX).write_text(old)
            lab.forget_sysctl(L.CT_MAX)
        kdrop = lab.node_stats()["drop"] - before["drop"]
        time.sleep(2.5)
        p.send_signal(signal.SIGINT)
        p.wait()
        out.seek(0)
        last = [json.loads(line) for line in out if line.strip()][-1]
    return {"idle": idle, "busy": busy, "rate": kdrop / wall, "sent": sent, "kdrop": kdrop,
            "total": last["totals"]["table_full"]}


def aggregation_of(tree: Path, n: int) -> float:
    """Events per second the pure live table (a tree's LiveTable) takes in:
    inserts, state updates and deletes of n distinct entries, as ctnetlink
    rows; in the tree's own process."""
    r = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", AGG_CODE.replace("N_EVENTS", str(n))],
                       cwd=tree, capture_output=True,
                       text=True, check=True)
    return float(r.stdout)


# The LiveTable moved from tracer/aggregate.py to tracer/core/aggregate.py
# with the layout by role: a baseline tree may have either
AGG_CODE = """
import socket, time
try:
    from tracer.core.aggregate import LiveTable
except ImportError:
    from tracer.aggregate import LiveTable
n = N_EVENTS
rows = []
for i in range(n):
    src = socket.inet_aton(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    rows.append((6, 1, src, b"\\xc6\\x13\\x00\\x02", 443, 0, (0, 0), 10000 + i % 50000))
upd = [r[:1] + (3,) + r[2:] for r in rows]
live = LiveTable()
t0 = time.perf_counter()
for r in rows:
    live.insert(r)
for r in upd:
    live.insert(r)
for r in rows:
    live.delete(r)
print(3 * n / (time.perf_counter() - t0))
"""


def spread(xs) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs):.3f} (min {xs[0]:.3f}, max {xs[-1]:.3f}, {len(xs)} rounds)"


def main():
    global _LAB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--flood", type=float, default=5.0)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--baseline", metavar="TREE", help="Also run TREE's cttrace (another worktree with its own "
                    ".venv), alternating with ours round by round; ratios ours/baseline.")
    ap.add_argument("--rounds", type=int, default=1, help="Rounds (each runs every tree once).")
    a = ap.parse_args()
    trees = [("ours", ROOT)] + ([("baseline", Path(a.baseline).resolve())] if a.baseline else [])
    res: dict = {name: [] for name, _ in trees}
    agg: dict = {name: [] for name, _ in trees}
    for _ in range(a.rounds):
        for name, tree in trees:
            agg[name].append(aggregation_of(tree, a.events // 3))
    L.lab_down("ctbench-")
    with L.Lab(containers=2, prefix="ctbench-") as lab:
        _LAB = lab
        for _ in range(a.rounds):
            for name, tree in trees:
                res[name].append(run_top(str(tree / ".venv" / "bin" / "cttrace"), lab, a))
    for name, tree in trees:
        print(f"== {name} ({tree})")
        print(f"aggregation: {statistics.median(agg[name]):,.0f} events/s in Python (one core; median)")
        for r in res[name]:
            print(f"top CPU idle {100 * r['idle']:.1f}% of a core; during a flood of {r['rate']:,.0f} "
                  f"table-full drops/s ({r['sent']:,} packets): {100 * r['busy']:.0f}% of a core; "
                  f"exact table-full total {r['total']:,} vs kernel {r['kdrop']:,} -> "
                  f"{'exact' if r['total'] == r['kdrop'] else 'MISMATCH'}")
    if a.baseline:
        o, b = res["ours"], res["baseline"]
        print("== ours / baseline, round by round")
        print(f"aggregation events/s: {spread([x / y for x, y in zip(agg['ours'], agg['baseline'])])}")
        print(f"top CPU idle:         {spread([x['idle'] / y['idle'] for x, y in zip(o, b) if y['idle']])}")
        print(f"top CPU in the flood: {spread([x['busy'] / y['busy'] for x, y in zip(o, b) if y['busy']])}")
        print(f"  per drop/s:         "
              f"{spread([(x['busy'] / x['rate']) / (y['busy'] / y['rate']) for x, y in zip(o, b) if y['busy']])}")


if __name__ == "__main__":
    main()
