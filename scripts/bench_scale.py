#!/usr/bin/env python3
"""Benchmark cttrace on real 1,000,000 and 2,000,000-entry tables (not a test).

  sudo flock /tmp/cttrace-host.lock .venv/bin/python scripts/bench_scale.py \
      [--sizes 1000000,2000000] [--repeat 3] [--idle 120] [--baseline DIR] \
      [--only snapshot,top,serve,doctor,idle,steady,events-off]

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
- `cttrace serve --netns NS`: time to ready, memory after the first scrape
  and 5 s later (RSS, anonymous and file-backed apart, from
  /proc/PID/status), peak RSS (VmHWM), and the cost per entry against serve
  on the empty table;
- idle: CPU of `cttrace top --json --netns NS` on that table over --idle
  seconds or 1.2 reconcile periods, whichever is longer (utime + stime
  over wall time); the table is older than top, so its entries are
  "legacy" (they may expire without an event) and top re-reads them with a
  reconcile dump every period: the cost of a table older than the listener;
- steady: `serve` and `top` started on an empty namespace, the table made
  after them (so every entry carries the event extension and the counts
  are exact from events), then their CPU over --idle seconds and memory:
  the steady state of a node;
- events-off: the same as steady with net.netfilter.nf_conntrack_events=0
  in the namespace (no events: every change is seen by a reconcile dump).

With --baseline DIR (a worktree of another commit with its own .venv),
every cttrace measurement runs for both trees on the same table, and the
ratios this/baseline are printed.
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
MIB = 2**20


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


def time_v(cmd: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds: user + system) of one
    run, output discarded. CPU time says more than wall time on a busy
    machine."""
    with tempfile.NamedTemporaryFile("w+") as err:
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=err)
        dt = time.perf_counter() - t0
        err.seek(0)
        text = err.read()
    if r.returncode:
        sys.exit(f"bench: {' '.join(cmd)} failed ({r.returncode}): {text[-800:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text))
    return dt, int(m.group(1)) * 1024, cpu


def runs(cmds: dict[str, list[str]], repeat: int) -> dict:
    """Each tree's command `repeat` times, the trees interleaved (a busy
    machine slows both alike)."""
    rs: dict[str, list] = {t: [] for t in cmds}
    for _ in range(repeat):
        for t, cmd in cmds.items():
            rs[t].append(time_v(cmd))
    out = {}
    for t, r in rs.items():
        ts = sorted(x[0] for x in r)
        out[t] = {"min": ts[0], "median": statistics.median(ts), "max": ts[-1],
                  "peak_mib": max(x[1] for x in r) / MIB,
                  "cpu_median": statistics.median(x[2] for x in r)}
    return out


def mem(pid: int) -> dict[str, float]:
    """RSS, anonymous, file-backed and peak RSS of a process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        st = {k: int(v) / 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB$", f.read(), re.M)}
    return {"rss": st["VmRSS"], "anon": st["RssAnon"], "file": st["RssFile"], "peak": st["VmHWM"]}


def fmt_mem(m: dict) -> str:
    return f"RSS {m['rss']:.0f} MiB (anon {m['anon']:.0f}, file {m['file']:.0f}), peak {m['peak']:.0f}"


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def start(cmd: list[str], tmp: Path, out=subprocess.DEVNULL) -> tuple[subprocess.Popen, float]:
    ready = tmp / f"ready-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    err = tmp / f"err-{time.monotonic_ns()}"
    p = subprocess.Popen([*cmd, "--ready-file", str(ready)], stdout=out, stderr=open(err, "w"))
    while not ready.exists():
        if p.poll() is not None:
            sys.exit(f"bench: {' '.join(cmd)} did not start: {err.read_text()[-800:]}")
        time.sleep(0.02)
    return p, time.perf_counter() - t0


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def scrape(port: int, timeout: float = 60) -> bytes:
    t0 = time.perf_counter()
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
        except OSError:
            if time.perf_counter() - t0 > timeout:
                raise
            time.sleep(0.1)


def source_entries(body: bytes) -> float:
    return sum(float(m) for m in re.findall(rb"^cttrace_source_entries\{[^}]*\} (\S+)$", body, re.M))


def reconciles(body: bytes) -> dict[str, float]:
    """serve's reconcile dumps by reason, and "seconds": the time spent on them."""
    out = {m.group(1).decode(): float(m.group(2)) for m in
           re.finditer(rb'^cttrace_table_reconciles_total\{reason="([^"]*)"\} (\S+)$', body, re.M)}
    m = re.search(rb"^cttrace_table_reconcile_seconds_total (\S+)$", body, re.M)
    out["seconds"] = float(m.group(1)) if m else 0.0
    return out


def serve(cttrace: list[str], ns: str, tmp: Path, repeat: int, port: int) -> dict:
    """Ready, first scrape, memory after it and 5 s later (the pump has run)."""
    out = []
    for k in range(repeat):
        p, ready = start([*cttrace, "serve", "--netns", ns, "--listen", f"127.0.0.1:{port + k}",
                          "--interval", "1"], tmp)
        try:
            t0 = time.perf_counter()
            body = scrape(port + k)
            scraped = time.perf_counter() - t0 + ready
            first = mem(p.pid)
            time.sleep(5)
            scrape(port + k)
            out.append((ready, scraped, first, mem(p.pid), source_entries(body)))
        finally:
            stop(p)
    best = min(out, key=lambda o: o[3]["rss"])
    return {"ready_s": [o[0] for o in out], "first_scrape_s": [o[1] for o in out],
            "first": max((o[2] for o in out), key=lambda m: m["rss"]), "settled": best[3],
            "peak_mib": max(o[3]["peak"] for o in out), "source_entries": out[-1][4]}


def _last_frame(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except ValueError:                  # a line being written
        return json.loads(lines[-2]) if len(lines) > 1 else {}


def idle_cpu(cttrace: list[str], ns: str, tmp: Path, seconds: float) -> dict:
    """CPU of top on an existing (legacy) table over at least `seconds` and
    at least 1.2 reconcile periods, so that the window holds a reconcile dump."""
    out = tmp / f"top-{time.monotonic_ns()}.json"
    p, ready_s = start([*cttrace, "top", "--json", "--interval", "1", "--netns", ns], tmp, open(out, "w"))
    try:
        time.sleep(3)
        f0 = _last_frame(out).get("freshness", {})
        window = max(seconds, 1.2 * f0.get("reconcile_period_s", 0))
        c0, t0 = cpu_s(p.pid), time.perf_counter()
        time.sleep(window)
        cpu = (cpu_s(p.pid) - c0) / (time.perf_counter() - t0)
        m = mem(p.pid)
        if p.poll() is not None:
            sys.exit(f"bench: top exited ({p.returncode})")
        f1 = _last_frame(out).get("freshness", {})
    finally:
        stop(p)
    return {"cpu_pct": 100 * cpu, "seconds": window, "ready_s": ready_s, "mem": m,
            "reconcile_period_s": f1.get("reconcile_period_s"), "last_dump_s": f1.get("last_dump_s"),
            "reconciles": (f1.get("resyncs") or 0) - (f0.get("resyncs") or 0)}


def steady(cttrace: list[str], size: int, tmp: Path, seconds: float, port: int, events: bool = True) -> dict:
    """serve and top on a namespace whose table is made after they started
    (events on: exact from events; or off), then CPU over `seconds`."""
    with L.Netns("scale-steady") as ns:
        if not events:
            ns.sysctl("net.netfilter.nf_conntrack_events", "0")
        out = tmp / f"steady-{time.monotonic_ns()}.json"
        top, _ = start([*cttrace, "top", "--json", "--interval", "1", "--netns", ns.name], tmp, open(out, "w"))
        srv = None
        try:
            srv, _ = start([*cttrace, "serve", "--netns", ns.name, "--listen", f"127.0.0.1:{port}",
                            "--interval", "1"], tmp)
            made = build(ns, size)
            count = ns.count()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 300:          # both have taken the table in
                f = _last_frame(out)
                if f.get("tracked", 0) >= count and not f.get("freshness", {}).get("pending") and \
                        source_entries(scrape(port)) >= count:
                    break
                time.sleep(1)
            caught_up = time.perf_counter() - t0
            time.sleep(5)
            f0 = _last_frame(out).get("freshness", {})
            d0 = reconciles(scrape(port))
            c0 = {"top": cpu_s(top.pid), "serve": cpu_s(srv.pid)}
            t0 = time.perf_counter()
            time.sleep(seconds)
            wall = time.perf_counter() - t0
            c1 = {"top": cpu_s(top.pid), "serve": cpu_s(srv.pid)}
            body = scrape(port)                 # after the CPU reading: a scrape is not the window's
            d1 = reconciles(body)
            f1 = _last_frame(out)
            r = {"entries": count, "build_s": made, "caught_up_s": caught_up, "seconds": wall,
                 "cpu_pct": {"top": 100 * (c1["top"] - c0["top"]) / wall,
                             "serve": 100 * (c1["serve"] - c0["serve"]) / wall},
                 # serve's reconcile dumps in the window, by reason, and their seconds
                 "serve_reconciles": {k: v - d0.get(k, 0) for k, v in d1.items() if v != d0.get(k, 0)},
                 "mem": {"top": mem(top.pid), "serve": mem(srv.pid)},
                 "top_tracked": f1.get("tracked"), "serve_entries": source_entries(body),
                 "kernel_count": ns.count(),
                 "reconciles": (f1.get("freshness", {}).get("resyncs") or 0) - (f0.get("resyncs") or 0),
                 "exact": f1.get("freshness", {}).get("exact"),
                 "last_dump_s": f1.get("freshness", {}).get("last_dump_s")}
        finally:
            stop(top)
            if srv is not None:
                stop(srv)
    return r


def fmt(r: dict) -> str:
    return (f"{r['min']:.2f} / {r['median']:.2f} / {r['max']:.2f} s, CPU {r['cpu_median']:.2f} s, "
            f"peak {r['peak_mib']:.0f} MiB")


def ratio(new: float, base: float) -> str:
    return f"{new / base:.2f}" if base else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,2000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=float, default=120.0, help="seconds of idle CPU measurement (0: skip idle, "
                    "steady and events-off)")
    ap.add_argument("--only", default="snapshot,top,serve,doctor,idle,steady",
                    help="of snapshot,top,serve,doctor,idle,steady,events-off")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--cttrace", metavar="CMD", help="command to run cttrace (default: .venv/bin/cttrace), "
                    "e.g. 'env PYTHONPATH=/tmp/tree .venv/bin/python -m tracer' for another tree")
    ap.add_argument("--baseline", metavar="DIR", help="also measure the cttrace of this tree (its own .venv): "
                    "a worktree of the commit to compare with")
    a = ap.parse_args()
    if a.cttrace:
        CTTRACE[:] = a.cttrace.split()
    trees = {"this": CTTRACE}
    if a.baseline:
        trees["base"] = [str(Path(a.baseline).resolve() / ".venv" / "bin" / "cttrace")]
    only = set(a.only.split(","))
    sizes = [int(s) for s in a.sizes.split(",")]
    results = {"cpus": os.cpu_count(), "trees": trees, "sizes": {}}

    def show(label: str, per_tree: dict, text, value=None) -> None:
        """One line per tree, and the ratio of `value` this/base."""
        for t, r in per_tree.items():
            print(f"  {label} [{t}]:".ljust(34) + text(r), flush=True)
        if value is not None and "base" in per_tree:
            print(f"  {label}: this/base {ratio(value(per_tree['this']), value(per_tree['base']))}", flush=True)

    old_max = Path(CT_MAX).read_text().strip()
    try:
        with tempfile.TemporaryDirectory() as d, L.Netns("scale-empty") as empty:
            tmp = Path(d)
            print(f"trees: {', '.join(f'{t} = {c[0]}' for t, c in trees.items())}", flush=True)
            if "top" in only:
                results["top_empty"] = runs({t: [*c, "top", "--once", "--json", "--netns", empty.name]
                                             for t, c in trees.items()}, a.repeat)
                show("top --once, empty table", results["top_empty"], fmt, lambda r: r["median"])
            if "serve" in only:
                results["serve_empty"] = {t: serve(c, empty.name, tmp, 1, 19490 + 5 * i)
                                          for i, (t, c) in enumerate(trees.items())}
                show("serve, empty table", results["serve_empty"], lambda r: fmt_mem(r["settled"]),
                     lambda r: r["settled"]["rss"])
            for size in sizes:
                need = size + int(Path(CT_COUNT).read_text()) + 50_000
                Path(CT_MAX).write_text(str(max(need, int(old_max))))
                r = results["sizes"][size] = {}
                with L.Netns("scale") as ns:
                    made = build(ns, size)
                    count = ns.count()
                    r.update({"entries": count, "build_s": made})
                    print(f"\n{count:,} entries (asked {size:,}) made in {made:.1f} s", flush=True)
                    base = ["ip", "netns", "exec", ns.name, "conntrack", "-L", "-o", "extended"]
                    r["conntrack"] = runs({"-": ["sh", "-c", " ".join(base) + " > /dev/null 2>&1"]},
                                          a.repeat)["-"]
                    print(f"  conntrack -L -o extended:       {fmt(r['conntrack'])}", flush=True)
                    b = r["conntrack"]["median"]
                    cmds = {"snapshot": ["snapshot", "--netns", ns.name, "--json"],
                            "top": ["top", "--once", "--json", "--netns", ns.name],
                            "doctor": ["doctor", "--netns", ns.name, "--json", "--window", "0.1"]}
                    for name, args in cmds.items():
                        if name in only:
                            r[name] = runs({t: [*c, *args] for t, c in trees.items()}, a.repeat)
                            show(name, r[name], lambda x: fmt(x) + f"  vs conntrack -L {x['median'] / b:.2f}",
                                 lambda x: x["median"])
                    if "snapshot" in only:
                        total = json.loads(subprocess.run([*CTTRACE, *cmds["snapshot"]], capture_output=True,
                                                          text=True, check=True).stdout)["total"]
                        r["snapshot_total"] = total
                        print(f"  snapshot total {total:,} vs kernel {count:,}", flush=True)
                    if "top" in only and "top_empty" in results:
                        for t in trees:
                            print(f"  top first frame [{t}]: +{r['top'][t]['median'] - results['top_empty'][t]['median']:.2f} s "
                                  "over the empty table", flush=True)
                    if "serve" in only:
                        r["serve"] = {t: serve(c, ns.name, tmp, a.repeat, 19500 + 5 * i)
                                      for i, (t, c) in enumerate(trees.items())}
                        for t, s in r["serve"].items():
                            empty_rss = results.get("serve_empty", {}).get(t, {}).get("settled", {}).get("rss")
                            s["bytes_per_entry"] = None if empty_rss is None else \
                                (s["settled"]["rss"] - empty_rss) * MIB / count
                        show("serve", r["serve"], lambda s: (
                            f"ready {min(s['ready_s']):.1f}-{max(s['ready_s']):.1f} s, first scrape "
                            f"{min(s['first_scrape_s']):.1f}-{max(s['first_scrape_s']):.1f} s, after it "
                            f"{fmt_mem(s['first'])}; 5 s later {fmt_mem(s['settled'])}"
                            + (f"; {s['bytes_per_entry']:.0f} bytes/entry over the empty table"
                               if s["bytes_per_entry"] is not None else "")
                            + f"; source entries {s['source_entries']:,.0f}"), lambda s: s["settled"]["rss"])
                    if "idle" in only and a.idle:
                        r["top_idle"] = {t: idle_cpu(c, ns.name, tmp, a.idle) for t, c in trees.items()}
                        show("top idle, legacy table", r["top_idle"], lambda x: (
                            f"{x['cpu_pct']:.2f}% of a core over {x['seconds']:.0f} s ({x['reconciles']} "
                            f"reconcile dumps of {x['last_dump_s']} s, period {x['reconcile_period_s']} s); "
                            f"{fmt_mem(x['mem'])}"), lambda x: x["cpu_pct"])
                for mode, events in (("steady", True), ("events-off", False)):
                    if mode in only and a.idle:
                        r[mode] = {t: steady(c, size, tmp, a.idle, 19520 + 5 * i, events)
                                   for i, (t, c) in enumerate(trees.items())}
                        for what in ("top", "serve"):
                            show(f"{what} {mode}", r[mode], lambda x: (
                                f"{x['cpu_pct'][what]:.2f}% of a core over {x['seconds']:.0f} s "
                                f"(reconcile dumps: top {x['reconciles']}, serve {x['serve_reconciles'] or 0}; caught up "
                                f"{x['caught_up_s']:.0f} s after the build); {fmt_mem(x['mem'][what])}; "
                                f"entries top {x['top_tracked']:,} serve {x['serve_entries']:,.0f} "
                                f"kernel {x['kernel_count']:,}"), lambda x: x["cpu_pct"][what])
    finally:
        Path(CT_MAX).write_text(old_max)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
