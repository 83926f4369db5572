#!/usr/bin/env python3
"""Benchmark cttrace on real 1,000,000 and 2,000,000-entry tables (not a test).

  sudo flock /tmp/cttrace-host.lock .venv/bin/python scripts/bench_scale.py \
      [--sizes 1000000,2000000] [--repeat 3] [--idle 120] [--only snapshot,top,serve,doctor]

For each size, a network namespace gets that many UDP entries (256 source
addresses 127.1.0.0-127.1.0.255, 2 processes, each flow to its own port of
127.0.0.1; the namespace's UDP timeout raised to an hour and the global
nf_conntrack_max raised first, both restored at the end). Then, on that
same table and in the same run, with several runs each (min / median /
max wall time, highest peak RSS from /usr/bin/time -v):

- baseline: `conntrack -L -o extended > /dev/null` in the namespace;
- `cttrace snapshot --netns NS --json`;
- `cttrace top --once --json --netns NS` (start to first frame and exit),
  against the same on an empty namespace (BCC's compile is most of it);
- `cttrace doctor --netns NS --json --window 0.1`;
- `cttrace serve --netns NS`: time to ready, RSS after the first scrape,
  peak RSS (VmHWM);
- steady CPU of `cttrace top --json --netns NS` on the idle table over
  --idle seconds or 1.2 reconcile periods, whichever is longer (utime +
  stime of the process over wall time; the window holds a reconcile dump
  of the table, which is made before top starts and so sends no events),
  and its RSS at the end.
"""

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import lab as L  # noqa: E402
from tracer.kernel import netns  # noqa: E402

CTTRACE = [str(ROOT / ".venv" / "bin" / "cttrace")]
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
CT_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"
SOURCES = 256


def _fill(args) -> int:
    """One process: `count` flows from sources [first, first+n)."""
    ns, first, nsrc, per = args
    made = 0
    with netns.entered(ns):
        socks = []
        for i in range(first, first + nsrc):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.1.0.{i}", 0))
            socks.append(s)
    for s in socks:
        send = s.sendto
        for port in range(1024, 1024 + per):
            try:
                send(b"", ("127.0.0.1", port))
                made += 1
            except OSError:
                pass
        s.close()
    return made


def build(ns: L.Netns, size: int) -> float:
    ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")
    per = -(-size // SOURCES)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_fill, [(ns.name, 0, SOURCES // 2, per), (ns.name, SOURCES // 2, SOURCES // 2, per)])
    return time.perf_counter() - t0


def time_v(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one run, output discarded."""
    with tempfile.NamedTemporaryFile("w+") as err:
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=err)
        dt = time.perf_counter() - t0
        err.seek(0)
        text = err.read()
    if r.returncode:
        sys.exit(f"bench: {' '.join(cmd)} failed ({r.returncode}): {text[-800:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return dt, int(m.group(1)) * 1024


def runs(cmd: list[str], repeat: int) -> dict:
    rs = [time_v(cmd) for _ in range(repeat)]
    ts = sorted(r[0] for r in rs)
    return {"min": ts[0], "median": statistics.median(ts), "max": ts[-1],
            "peak_mib": max(r[1] for r in rs) / 2**20}


def proc_status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in re.findall(r"^(Vm\w+):\s+(.+)$", f.read(), re.M)}


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def start(cmd: list[str], tmp: Path) -> tuple[subprocess.Popen, float]:
    ready = tmp / f"ready-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    p = subprocess.Popen([*cmd, "--ready-file", str(ready)], stdout=subprocess.DEVNULL,
                         stderr=open(tmp / "err", "w"))
    while not ready.exists():
        if p.poll() is not None:
            sys.exit(f"bench: {' '.join(cmd)} did not start: {(tmp / 'err').read_text()[-800:]}")
        time.sleep(0.02)
    return p, time.perf_counter() - t0


def serve(ns: str, tmp: Path, repeat: int) -> dict:
    out = []
    for k in range(repeat):
        port = 19500 + k
        p, ready = start([*CTTRACE, "serve", "--netns", ns, "--listen", f"127.0.0.1:{port}",
                          "--interval", "1"], tmp)
        try:
            t0 = time.perf_counter()
            while True:
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
                    break
                except OSError:
                    if time.perf_counter() - t0 > 60:
                        raise
                    time.sleep(0.1)
            scraped = time.perf_counter() - t0 + ready
            st = proc_status(p.pid)
            entries = sum(float(m) for m in re.findall(rb"^cttrace_source_entries\{[^}]*\} (\S+)$", body, re.M))
            out.append((ready, scraped, st["VmRSS"], st["VmHWM"], entries))
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
    return {"ready_s": [o[0] for o in out], "first_scrape_s": [o[1] for o in out],
            "rss_mib": max(o[2] for o in out) / 2**20, "peak_mib": max(o[3] for o in out) / 2**20,
            "source_entries": out[-1][4]}


def _last_frame(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def idle_cpu(ns: str, tmp: Path, seconds: float) -> dict:
    """CPU of top on the idle table over at least `seconds` and at least
    1.2 reconcile periods (the period top reports), so that the window
    holds a reconcile dump."""
    out = tmp / "top.json"
    ready = tmp / f"ready-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    p = subprocess.Popen([*CTTRACE, "top", "--json", "--interval", "1", "--netns", ns,
                          "--ready-file", str(ready)], stdout=open(out, "w"), stderr=open(tmp / "err", "w"))
    try:
        while not ready.exists():
            if p.poll() is not None:
                sys.exit(f"bench: top did not start: {(tmp / 'err').read_text()[-800:]}")
            time.sleep(0.02)
        ready_s = time.perf_counter() - t0
        time.sleep(3)
        f0 = _last_frame(out).get("freshness", {})
        window = max(seconds, 1.2 * f0.get("reconcile_period_s", 0))
        c0, t0 = cpu_s(p.pid), time.perf_counter()
        time.sleep(window)
        cpu = (cpu_s(p.pid) - c0) / (time.perf_counter() - t0)
        st = proc_status(p.pid)
        if p.poll() is not None:
            sys.exit(f"bench: top exited ({p.returncode}): {(tmp / 'err').read_text()[-800:]}")
        f1 = _last_frame(out).get("freshness", {})
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(60)
    return {"cpu_pct": 100 * cpu, "seconds": window, "ready_s": ready_s,
            "rss_mib": st["VmRSS"] / 2**20, "peak_mib": st["VmHWM"] / 2**20,
            "reconcile_period_s": f1.get("reconcile_period_s"),
            "reconciles": (f1.get("resyncs") or 0) - (f0.get("resyncs") or 0)}


def fmt(r: dict) -> str:
    return f"{r['min']:.2f} / {r['median']:.2f} / {r['max']:.2f} s, peak {r['peak_mib']:.0f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,2000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=float, default=120.0, help="seconds of idle CPU measurement of top (0: skip)")
    ap.add_argument("--only", default="snapshot,top,serve,doctor")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--cttrace", metavar="CMD", help="command to run cttrace (default: .venv/bin/cttrace), "
                    "e.g. 'env PYTHONPATH=/tmp/tree .venv/bin/python -m tracer' for another tree")
    a = ap.parse_args()
    if a.cttrace:
        CTTRACE[:] = a.cttrace.split()
    only = set(a.only.split(","))
    sizes = [int(s) for s in a.sizes.split(",")]
    results = {"cpus": os.cpu_count(), "sizes": {}}
    old_max = Path(CT_MAX).read_text().strip()
    try:
        with tempfile.TemporaryDirectory() as d, L.Netns("scale-empty") as empty:
            tmp = Path(d)
            if "top" in only:
                results["top_empty"] = runs([*CTTRACE, "top", "--once", "--json", "--netns", empty.name],
                                            a.repeat)
                print(f"top --once, empty table: {fmt(results['top_empty'])}", flush=True)
            for size in sizes:
                need = size + int(Path(CT_COUNT).read_text()) + 50_000
                Path(CT_MAX).write_text(str(max(need, int(old_max))))
                with L.Netns("scale") as ns:
                    made = build(ns, size)
                    count = ns.count()
                    r = {"entries": count, "build_s": made}
                    print(f"\n{count:,} entries (asked {size:,}) made in {made:.1f} s", flush=True)
                    base = ["ip", "netns", "exec", ns.name, "conntrack", "-L", "-o", "extended"]
                    r["conntrack"] = runs(["sh", "-c", " ".join(base) + " > /dev/null 2>&1"], a.repeat)
                    print(f"  conntrack -L -o extended:  {fmt(r['conntrack'])}", flush=True)
                    b = r["conntrack"]["median"]
                    cmds = {"snapshot": ["snapshot", "--netns", ns.name, "--json"],
                            "top": ["top", "--once", "--json", "--netns", ns.name],
                            "doctor": ["doctor", "--netns", ns.name, "--json", "--window", "0.1"]}
                    for name, args in cmds.items():
                        if name in only:
                            r[name] = runs([*CTTRACE, *args], a.repeat)
                            print(f"  {name}:".ljust(29) + fmt(r[name]) +
                                  f"  ratio {r[name]['median'] / b:.2f}", flush=True)
                    if "snapshot" in only:
                        total = json.loads(subprocess.run([*CTTRACE, *cmds["snapshot"]], capture_output=True,
                                                          text=True, check=True).stdout)["total"]
                        r["snapshot_total"] = total
                        print(f"  snapshot total {total:,} vs kernel {count:,}", flush=True)
                    if "top" in only and "top_empty" in results:
                        print(f"  top first frame: +{r['top']['median'] - results['top_empty']['median']:.2f} s "
                              "over the empty table", flush=True)
                    if "serve" in only:
                        r["serve"] = serve(ns.name, tmp, a.repeat)
                        s = r["serve"]
                        print(f"  serve: ready {min(s['ready_s']):.1f}-{max(s['ready_s']):.1f} s, first scrape "
                              f"{min(s['first_scrape_s']):.1f}-{max(s['first_scrape_s']):.1f} s, RSS after it "
                              f"{s['rss_mib']:.0f} MiB, peak {s['peak_mib']:.0f} MiB, "
                              f"source entries {s['source_entries']:,.0f}", flush=True)
                    if "top" in only and a.idle:
                        r["top_idle"] = idle_cpu(ns.name, tmp, a.idle)
                        t = r["top_idle"]
                        print(f"  top idle CPU over {t['seconds']:.0f} s: {t['cpu_pct']:.1f}% of a core "
                              f"({t['reconciles']} reconcile dumps, period {t['reconcile_period_s']} s); "
                              f"RSS {t['rss_mib']:.0f} MiB, peak {t['peak_mib']:.0f} MiB", flush=True)
                results["sizes"][size] = r
    finally:
        Path(CT_MAX).write_text(old_max)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
