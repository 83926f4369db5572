#!/usr/bin/env python3
"""Benchmark `cttrace snapshot` against the classic one-liners (not a test).

  scripts/bench_snapshot.py file [--lines 1000000]   # an exported table
  scripts/bench_snapshot.py live [--entries 200000]  # a real table (root)

file: generates a realistic table (scripts/gen_table.py, /proc format),
then times, on the same warm file and in the same run,
  - the one-liners back to back: per-source awk -F'=' '{c[$2]++}', per-state
    awk on the state column, per-destination, per-dport (each | sort -nr | head);
  - cttrace snapshot --file F --json (all breakdowns, one pass);
and reports the ratio (cttrace / one-liners) and cttrace's peak memory
(sum of the RSS of its processes, sampled every 10 ms).

live: makes a network namespace holding N real UDP entries, then times
`conntrack -L -o extended > /dev/null` against
`cttrace snapshot --netns NS --json > /dev/null` on that same table.

Each timing is the median of --repeat runs.

--baseline TREE: also times TREE's own cttrace (another worktree, e.g. of an
older commit, with its own .venv) on the same input, interleaved with ours
run by run, and prints the ratio ours / baseline per run: its median and
spread (min-max).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CTTRACE = str(ROOT / ".venv" / "bin" / "cttrace")

ONE_LINERS = [
    "awk -F'=' '{c[$2]++} END {for (k in c) print c[k], k}' {f} | sort -nr | head",
    "awk '{c[$6]++} END {for (k in c) print c[k], k}' {f} | sort -nr | head",
    "awk -F'=' '{split($3, a, \" \"); c[a[1]]++} END {for (k in c) print c[k], k}' {f} | sort -nr | head",
    "awk -F'dport=' '{split($2, a, \" \"); c[a[1]]++} END {for (k in c) print c[k], k}' {f} | sort -nr | head",
]


def tree_rss(pid: int) -> int:
    """RSS in bytes of pid and its descendants."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


def timed(cmd, shell=False) -> tuple[float, int]:
    """(wall seconds, peak tree RSS bytes) of one run; output discarded."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_rss(p.pid))
        time.sleep(0.01)
    dt = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"bench: {cmd} failed ({p.returncode})")
    return dt, peak


def median_run(cmd, repeat, shell=False):
    runs = [timed(cmd, shell) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def versus(args, cmd_of) -> None:
    """Ours against --baseline, interleaved: cmd_of(cttrace) -> argv."""
    other = str(Path(args.baseline).resolve() / ".venv" / "bin" / "cttrace")
    ratios, mine, theirs = [], [], []
    for _ in range(args.repeat):
        a, pa = timed(cmd_of(CTTRACE))
        b, pb = timed(cmd_of(other))
        mine.append((a, pa))
        theirs.append((b, pb))
        ratios.append(a / b)
    r = sorted(ratios)
    print(f"  vs baseline {args.baseline}: ours {statistics.median(x for x, _ in mine):.2f} s "
          f"(peak RSS {max(p for _, p in mine) / 2**20:.0f} MiB), baseline "
          f"{statistics.median(x for x, _ in theirs):.2f} s (peak RSS {max(p for _, p in theirs) / 2**20:.0f} MiB)"
          f"; ratio ours/baseline median {statistics.median(r):.3f} (min {r[0]:.3f}, max {r[-1]:.3f}, "
          f"{len(r)} runs)")


def bench_file(args):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "table.txt"
        with open(f, "w") as out:
            subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_table.py"),
                            "--lines", str(args.lines)], stdout=out, check=True)
        size = f.stat().st_size
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)   # warm the page cache
        script = " ; ".join(c.replace("{f}", str(f)) for c in ONE_LINERS)
        base, _ = median_run(["sh", "-c", script], args.repeat)
        each = [median_run(["sh", "-c", c.replace("{f}", str(f))], args.repeat)[0] for c in ONE_LINERS]
        ours, peak = median_run([CTTRACE, "snapshot", "--file", str(f), "--json"], args.repeat)
        ours1, peak1 = median_run([CTTRACE, "snapshot", "--file", str(f), "--json", "--jobs", "1"], args.repeat)
        print(f"table file: {args.lines:,} lines, {size / 1e6:.0f} MB, {os.cpu_count()} CPUs")
        print(f"one-liners back to back: {base:.2f} s  (each: {', '.join(f'{x:.2f}' for x in each)})")
        print(f"cttrace snapshot --json: {ours:.2f} s, peak RSS {peak / 2**20:.0f} MiB  -> ratio {ours / base:.2f}")
        print(f"  with --jobs 1:         {ours1:.2f} s, peak RSS {peak1 / 2**20:.0f} MiB  -> ratio {ours1 / base:.2f}")
        if args.baseline:
            for jobs in ([], ["--jobs", "1"]):
                print(f"snapshot --file --json {' '.join(jobs)}".rstrip())
                versus(args, lambda c: [c, "snapshot", "--file", str(f), "--json", *jobs])


def bench_live(args):
    sys.path.insert(0, str(ROOT))
    from tests import lab
    maxpath = "/proc/sys/net/netfilter/nf_conntrack_max"
    old_max = open(maxpath).read().strip()
    need = args.entries + int(open("/proc/sys/net/netfilter/nf_conntrack_count").read()) + 1000
    try:
        if int(old_max) < need:
            open(maxpath, "w").write(str(need))
        with lab.Netns("bench") as ns:
            ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")
            t0 = time.perf_counter()
            ns.udp_flows(args.entries, first_port=1024)
            made = time.perf_counter() - t0
            count = ns.count()
            base, _ = median_run(f"ip netns exec {ns.name} conntrack -L -o extended > /dev/null 2>&1",
                                 args.repeat, shell=True)
            ours, peak = median_run([CTTRACE, "snapshot", "--netns", ns.name, "--json"], args.repeat)
            check = subprocess.run([CTTRACE, "snapshot", "--netns", ns.name, "--json"],
                                   capture_output=True, text=True, check=True).stdout
            import json
            total = json.loads(check)["total"]
            print(f"live table: {count:,} entries (made in {made:.1f} s); cttrace saw {total:,}")
            print(f"conntrack -L -o extended > /dev/null: {base:.2f} s")
            print(f"cttrace snapshot --netns --json:      {ours:.2f} s, peak RSS {peak / 2**20:.0f} MiB "
                  f"-> ratio {ours / base:.2f}")
            if args.baseline:
                versus(args, lambda c: [c, "snapshot", "--netns", ns.name, "--json"])
    finally:
        open(maxpath, "w").write(old_max)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("file")
    f.add_argument("--lines", type=int, default=1_000_000)
    f.add_argument("--repeat", type=int, default=3)
    f.add_argument("--baseline", metavar="TREE", help="Also time TREE/.venv/bin/cttrace (ratio ours/baseline).")
    live = sub.add_parser("live")
    live.add_argument("--entries", type=int, default=200_000)
    live.add_argument("--repeat", type=int, default=3)
    live.add_argument("--baseline", metavar="TREE", help="Also time TREE/.venv/bin/cttrace (ratio ours/baseline).")
    a = ap.parse_args()
    bench_file(a) if a.what == "file" else bench_live(a)


if __name__ == "__main__":
    main()
