#!/usr/bin/env python3
"""Benchmark `cttrace top` (not a test).

  sudo .venv/bin/python scripts/bench_top.py [--events 500000] [--flood 5]

1. Aggregation: how many conntrack events per second the pure state
   (tracer/aggregate.LiveTable) takes in Python: inserts, state updates and
   deletes of distinct entries, as ctnetlink rows.
2. CPU of `cttrace top --json` on the lab's node: idle, then during a
   table-full flood (every container sending to new ports as fast as it
   can), as utime+stime of its process over wall time; and whether its exact
   table-full total equals the kernel's `drop` delta.
"""

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import lab as L  # noqa: E402
from tracer.core.aggregate import LiveTable  # noqa: E402

CTTRACE = str(ROOT / ".venv" / "bin" / "cttrace")
_LAB = None


def aggregation(n: int) -> float:
    rows = []
    for i in range(n):
        src = socket.inet_aton(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        rows.append((6, 1, src, b"\xc6\x13\x00\x02", 443, 0, (0, 0), 10000 + i % 50000))
    upd = [r[:1] + (3,) + r[2:] for r in rows]
    live = LiveTable()
    t0 = time.perf_counter()
    for r in rows:
        live.insert(r)
    for r in upd:
        live.insert(r)
    for r in rows:
        live.delete(r)
    dt = time.perf_counter() - t0
    assert len(live) == 0
    return 3 * n / dt


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def _flood(a):
    c, secs, base = a
    return _LAB.flood(c, secs, base).requested


def main():
    global _LAB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--flood", type=float, default=5.0)
    ap.add_argument("--idle", type=float, default=5.0)
    a = ap.parse_args()
    print(f"aggregation: {aggregation(a.events // 3):,.0f} events/s in Python (one core)")
    L.lab_down("ctbench-")
    with tempfile.TemporaryDirectory() as tmp, L.Lab(containers=2, prefix="ctbench-") as lab:
        _LAB = lab
        ready = Path(tmp) / "ready"
        out = open(Path(tmp) / "out", "w+")
        p = subprocess.Popen([CTTRACE, "top", "--json", "--netns", lab.node, "--interval", "1",
                              "--ready-file", str(ready)], stdout=out, stderr=subprocess.DEVNULL)
        while not ready.exists():
            if p.poll() is not None:
                sys.exit("bench: top did not start")
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
        last = [json.loads(l) for l in out if l.strip()][-1]
    print(f"top CPU idle: {100 * idle:.1f}% of a core")
    print(f"top CPU during a flood of {kdrop / wall:,.0f} table-full drops/s ({sent:,} packets): "
          f"{100 * busy:.0f}% of a core")
    print(f"top's exact table-full total {last['totals']['table_full']:,} vs kernel {kdrop:,} -> "
          f"{'exact' if last['totals']['table_full'] == kdrop else 'MISMATCH'}")


if __name__ == "__main__":
    main()
