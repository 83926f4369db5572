#!/usr/bin/env python3
"""Benchmark the drop tracer (not a test): overhead and flood behaviour.

  sudo .venv/bin/python scripts/bench_drops.py [--flows 20000] [--flood 5]

1. The lab's maximum new-flow rate (UDP query/answer, one generator process
   per container) without, then with `cttrace drops --json` attached; the
   ratio is the rate kept.
2. A table-full flood: the node's table is filled, then every container
   sends unanswered UDP packets to new ports as fast as it can for --flood
   seconds. Reports drops/s, the tracer's own CPU use (utime+stime of its
   process over the flood) and whether its exact totals equal the kernel's
   `drop` counter delta.
"""

import argparse
import multiprocessing as mp
import os
import re
import signal
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
BACKEND = "auto"


def _udp(args):
    c, n = args
    r = _LAB.udp_flows(c, n)
    return len(r.flows)


def _flood(args):
    c, secs, base = args
    return _LAB.flood(c, secs, base).requested


def rate(lab, flows):
    per = flows // len(lab.containers)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(len(lab.containers)) as pool:
        ok = sum(pool.map(_udp, [(c, per) for c in lab.containers]))
    return ok / (time.perf_counter() - t0)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_tracer(tmp):
    ready = Path(tmp) / "ready"
    ready.unlink(missing_ok=True)
    err = open(Path(tmp) / "err", "w+")
    p = subprocess.Popen([CTTRACE, "drops", "--json", "--backend", BACKEND, "--ready-file", str(ready)],
                         stdout=subprocess.DEVNULL, stderr=err)
    while not ready.exists():
        if p.poll() is not None:
            sys.exit("bench: cttrace drops did not start")
        time.sleep(0.05)
    return p, err


def main():
    global _LAB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--flood", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="auto", help="cttrace drops --backend (auto, kprobe, tracepoint)")
    ap.add_argument("--rounds", type=int, default=2, help="measurements of each kind, alternated")
    a = ap.parse_args()
    global BACKEND
    BACKEND = a.backend
    L.lab_down("ctbench-")
    with tempfile.TemporaryDirectory() as tmp:
        # each measurement on a fresh lab (entries of the last run would
        # otherwise fill the table); alternated, twice each
        rates = {False: [], True: []}
        for traced in (False, True) * a.rounds:
            with L.Lab(containers=a.workers, prefix="ctbench-") as lab:
                _LAB = lab
                p = start_tracer(tmp)[0] if traced else None
                try:
                    rates[traced].append(rate(lab, a.flows))
                finally:
                    if p:
                        p.send_signal(signal.SIGINT)
                        p.wait()
        base, traced = (sum(rates[k]) / len(rates[k]) for k in (False, True))
        print(f"new-flow rate: {base:,.0f}/s without the tracer, {traced:,.0f}/s with it "
              f"(runs: {', '.join(f'{r:,.0f}' for r in rates[False])} / "
              f"{', '.join(f'{r:,.0f}' for r in rates[True])}) "
              f"-> {100 * traced / base:.1f}% kept (backend {BACKEND})")
        if a.flood <= 0:
            return
    with tempfile.TemporaryDirectory() as tmp, L.Lab(containers=a.workers, prefix="ctbench-") as lab:
        _LAB = lab
        old = Path(L.CT_MAX).read_text().strip()
        p, err = start_tracer(tmp)
        before = lab.node_stats()
        lab.save_sysctl(L.CT_MAX, old)
        try:
            Path(L.CT_MAX).write_text(str(max(lab.node_count(), 1)))
            c0, t0 = cpu_seconds(p.pid), time.perf_counter()
            with mp.get_context("fork").Pool(len(lab.containers)) as pool:
                sent = sum(pool.map(_flood, [(c, a.flood, 20000 + 1000 * i)
                                             for i, c in enumerate(lab.containers)]))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(p.pid) - c0
        finally:
            Path(L.CT_MAX).write_text(old)
            lab.forget_sysctl(L.CT_MAX)
        after = lab.node_stats()
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        p.wait()
        err.seek(0)
        summary = err.read()
        m = re.search(r"(\d+) netfilter drops in all \((\d+) table_full", summary) or \
            re.search(r"shown; ((\d+)) table_full", summary)
        kdrop = after["drop"] - before["drop"]
        print(f"flood: {sent:,} packets in {wall:.1f} s, kernel drop +{kdrop:,} = {kdrop / wall:,.0f} drops/s")
        print(f"tracer CPU during the flood: {cpu:.2f} s over {wall:.1f} s = {100 * cpu / wall:.0f}% of a core")
        if m:
            print(f"tracer totals: {int(m.group(1)):,} netfilter drops, {int(m.group(2)):,} table_full "
                  f"(kernel: {kdrop:,}) -> {'exact' if int(m.group(2)) == kdrop else 'MISMATCH'}")
        print(summary.strip().splitlines()[1] if len(summary.strip().splitlines()) > 1 else summary)


if __name__ == "__main__":
    main()
