#!/usr/bin/env python3
"""Benchmark reading published ports from DNAT rules (not a test).

  .venv/bin/python scripts/bench_dnat.py [--services 10000] [--endpoints 2] [--rounds 5]

A kube-proxy-shaped iptables-save nat table, as kube-proxy (iptables mode)
writes it, with comments: per Service a ClusterIP rule in KUBE-SERVICES, a
NodePort rule, a KUBE-EXT chain, a KUBE-SVC chain with one statistic rule
per endpoint, and per endpoint a KUBE-SEP chain (masquerade mark, DNAT).
10,000 Services with 2 endpoints each make 100,003 rules (12 MB). Times
tracer/core/dnat.published (parse and walk) per round: min, median, max,
against a baseline in the same run: a bare pass that only splits every line
into words (the floor of any parser in Python), as a ratio of medians.
Attribution reads a namespace's rules at most every 30 s and at most every
25 times the last read's time (tracer/kernel/attribution.py).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tracer.core import dnat  # noqa: E402


def ruleset(services: int, endpoints: int) -> str:
    lines = ["*nat", '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
             'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS']
    for i in range(services):
        a, b = divmod(i, 250)
        svc = f"ns{i}/svc{i}:http"
        lines.append(f'-A KUBE-SERVICES -d 10.96.{a % 256}.{b}/32 -p tcp -m comment --comment "{svc} cluster IP" '
                     f'-m tcp --dport 80 -j KUBE-SVC-{i:016X}')
        lines.append(f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{svc}" -m tcp --dport {30000 + i % 2700} '
                     f'-j KUBE-EXT-{i:016X}')
        lines.append(f'-A KUBE-EXT-{i:016X} -m comment --comment "masquerade traffic for {svc} external '
                     f'destinations" -j KUBE-MARK-MASQ')
        lines.append(f'-A KUBE-EXT-{i:016X} -j KUBE-SVC-{i:016X}')
        for j in range(endpoints):
            sep = f"KUBE-SEP-{i:08X}{j:08X}"
            ep = f"10.244.{a % 256}.{(b + j) % 256}"
            lines.append(f'-A KUBE-SVC-{i:016X} -m comment --comment "{svc} -> {ep}:8080" -m statistic '
                         f'--mode random --probability {1 / (endpoints - j):.11f} -j {sep}')
            lines.append(f'-A {sep} -s {ep}/32 -m comment --comment "{svc}" -j KUBE-MARK-MASQ')
            lines.append(f'-A {sep} -p tcp -m comment --comment "{svc}" -m tcp -j DNAT --to-destination {ep}:8080')
    return "\n".join(lines) + "\nCOMMIT\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    text = ruleset(a.services, a.endpoints)
    rules = text.count("\n-A ")
    times, base, found = [], [], []
    for _ in range(a.rounds):
        t = time.perf_counter()
        words = sum(len(line.split()) for line in text.splitlines())
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        found = dnat.published(text)
        times.append(time.perf_counter() - t)
    print(f"{rules:,} rules ({len(text) / 2**20:.1f} MiB), {a.services:,} Services x {a.endpoints} endpoints: "
          f"{len(found):,} mappings; parse and walk min {min(times):.2f} s, median "
          f"{statistics.median(times):.2f} s, max {max(times):.2f} s over {a.rounds} rounds; baseline (split "
          f"{words:,} words) median {statistics.median(base):.2f} s; ratio "
          f"{statistics.median(times) / statistics.median(base):.1f}")


if __name__ == "__main__":
    main()
