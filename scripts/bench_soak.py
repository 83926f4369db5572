#!/usr/bin/env python3
"""A long run under churn (a benchmark, not a test).

  sudo flock /tmp/cttrace-host.lock .venv/bin/python scripts/bench_soak.py \
      [--minutes 20] [--scrapers 16] [--max 20000]

`cttrace serve` and `cttrace top --json` follow one network namespace for
--minutes while, all the time:

- other namespaces are created and destroyed, several per second, each
  with conntrack switched on and a few flows of its own;
- sources churn in the followed namespace: UDP flows from ever new source
  addresses (127.2.x.y on its loopback, 30 s UDP timeout there);
- every 90 s `conntrack -F` flushes its table;
- every 60 s a table-full flood runs for 10 s (new flows as fast as one
  process can send them, against a global nf_conntrack_max of --max,
  raised back when the run ends);
- --scrapers threads scrape serve's /metrics back to back.

Reported: the RSS of serve and top (start, end, slope over the second half
of the run, MiB per hour), the occupancy of their BPF maps (bpftool: entries
at start, largest, end), serve's and top's exact totals against the kernel's
counters once the churn stops, every scrape answered or not, scrape
latency (median, p99, max), and the pump loop's sample age seen by scrapes.
"""

import argparse
import json
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import lab as L  # noqa: E402
from tracer.kernel import netns  # noqa: E402

CTTRACE = str(ROOT / ".venv" / "bin" / "cttrace")
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
PORT = 19477


def mem(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per hour."""
    if len(points) < 3:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def kernel_stats(ns: str) -> dict[str, int]:
    with netns.entered(ns):
        lines = Path("/proc/net/stat/nf_conntrack").read_text().split("\n")
    head = lines[0].split()
    out: dict[str, int] = {}
    for line in lines[1:]:
        if line.strip():
            for k, v in zip(head, line.split()):
                out[k] = out.get(k, 0) + int(v, 16)
    return out


def bpf_maps() -> dict[int, str]:
    r = subprocess.run(["bpftool", "map", "show", "-j"], capture_output=True, text=True)
    try:
        return {m["id"]: m.get("name", "") for m in json.loads(r.stdout or "[]")}
    except ValueError:
        return {}


def map_entries(mid: int) -> int:
    r = subprocess.run(["bpftool", "map", "dump", "id", str(mid), "-j"], capture_output=True, text=True)
    try:
        return len(json.loads(r.stdout or "[]"))
    except ValueError:
        return -1


def metric(body: str, name: str, labels: str = "") -> float:
    pat = "^" + re.escape(name) + (r"\{" + labels + r"[^}]*\}" if labels else r"(?:\{[^}]*\})?") + r" (\S+)$"
    return sum(float(v) for v in re.findall(pat, body, re.M))


class Churn:
    """The background load (see the module docstring); stop() ends it."""

    def __init__(self, ns: L.Netns, ct_max: int):
        self.ns, self.ct_max = ns, ct_max
        self.stop_ev = threading.Event()
        self.made_ns = self.flushes = self.floods = self.flood_sent = self.flows = 0
        self.threads = [threading.Thread(target=f, daemon=True) for f in
                        (self._namespaces, self._sources, self._flush, self._flood)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(60)

    def _namespaces(self):
        while not self.stop_ev.is_set():
            try:
                with L.Netns("soak-churn") as other:
                    other.run("ip", "addr", "add", "127.9.0.1/8", "dev", "lo", check=False)
                    with netns.entered(other.name):
                        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    for p in range(5):
                        s.sendto(b"x", ("127.0.0.1", 4000 + p))
                    s.close()
                    self.made_ns += 1
            except Exception:
                time.sleep(0.2)

    def _sources(self):
        rnd = random.Random(1)
        while not self.stop_ev.is_set():
            a = f"127.2.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            try:
                with netns.entered(self.ns.name):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((a, 0))
                for p in range(20):
                    try:
                        s.sendto(b"x", ("127.0.0.1", 5000 + p))
                        self.flows += 1
                    except OSError:
                        pass
                s.close()
            except OSError:
                pass
            time.sleep(0.1)

    def _flush(self):
        while not self.stop_ev.wait(90):
            self.ns.run("conntrack", "-F", check=False)
            self.flushes += 1

    def _flood(self):
        while not self.stop_ev.wait(50):
            self.floods += 1
            end = time.monotonic() + 10
            with netns.entered(self.ns.name):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.3.0.1", 0))
            port = 10000
            while time.monotonic() < end and not self.stop_ev.is_set():
                port = port + 1 if port < 60000 else 10000
                try:
                    s.sendto(b"", ("127.0.0.1", port))
                except OSError:
                    pass
                self.flood_sent += 1
            s.close()


def scraper(stop: threading.Event, lat: list, fails: list, ages: list):
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30).read().decode()
        except Exception as e:
            fails.append(f"{type(e).__name__}: {e}")
            time.sleep(0.1)
            continue
        lat.append(time.perf_counter() - t0)
        ages.append(metric(body, "cttrace_last_sample_age_seconds"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--scrapers", type=int, default=16)
    ap.add_argument("--max", type=int, default=20000, help="global nf_conntrack_max during the run")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    old_max = Path(CT_MAX).read_text().strip()
    L.cleanup_leftovers()
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp, L.Netns("soak") as ns:
        tmp = Path(tmp)
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "30")
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "30")
        ns.run("ip", "addr", "add", "127.2.0.1/8", "dev", "lo", check=False)
        before_maps = set(bpf_maps())
        procs = {}
        try:
            for what, cmd in (("serve", ["serve", "--listen", f"127.0.0.1:{PORT}", "--interval", "2"]),
                              ("top", ["top", "--json", "--interval", "5"])):
                ready = tmp / f"ready-{what}"
                out = open(tmp / f"{what}.out", "w")
                procs[what] = subprocess.Popen([CTTRACE, *cmd, "--netns", ns.name, "--ready-file", str(ready)],
                                               stdout=out, stderr=open(tmp / f"{what}.err", "w"))
                while not ready.exists():
                    if procs[what].poll() is not None:
                        sys.exit(f"soak: {what} did not start: {(tmp / f'{what}.err').read_text()[-600:]}")
                    time.sleep(0.05)
            k0 = kernel_stats(ns.name)
            ours = {i: n for i, n in bpf_maps().items() if i not in before_maps}
            occ = {i: [map_entries(i)] for i in ours}
            Path(CT_MAX).write_text(str(a.max))
            churn = Churn(ns, a.max).start()
            stop = threading.Event()
            lat: list = []
            fails: list = []
            ages: list = []
            scr = [threading.Thread(target=scraper, args=(stop, lat, fails, ages), daemon=True)
                   for _ in range(a.scrapers)]
            for t in scr:
                t.start()
            t0 = time.monotonic()
            rss = {w: [] for w in procs}
            end = t0 + 60 * a.minutes
            next_maps = t0
            while time.monotonic() < end:
                now = time.monotonic() - t0
                for w, p in procs.items():
                    if p.poll() is not None:
                        sys.exit(f"soak: {w} exited ({p.returncode}) after {now:.0f} s: "
                                 f"{(tmp / f'{w}.err').read_text()[-600:]}")
                    rss[w].append((now, mem(p.pid)))
                if time.monotonic() >= next_maps:
                    for i in ours:
                        occ[i].append(map_entries(i))
                    next_maps += 60
                    print(f"soak: {now / 60:.1f} min, RSS serve {rss['serve'][-1][1]:.0f} MiB top "
                          f"{rss['top'][-1][1]:.0f} MiB, scrapes {len(lat)} ({len(fails)} failed), "
                          f"namespaces made {churn.made_ns}, floods {churn.floods}, flushes {churn.flushes}",
                          flush=True)
                time.sleep(10)
            churn.stop()
            Path(CT_MAX).write_text(old_max)
            stop.set()
            for t in scr:
                t.join(60)
            time.sleep(8)                       # the last events and a sample
            body = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30).read().decode()
            k1 = kernel_stats(ns.name)
            count = ns.count()
            for i in ours:
                occ[i].append(map_entries(i))
        finally:
            Path(CT_MAX).write_text(old_max)
            for p in procs.values():
                p.send_signal(signal.SIGINT)
            for p in procs.values():
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        frames = [json.loads(x) for x in (tmp / "top.out").read_text().splitlines() if x.strip()]
        last = frames[-1] if frames else {}
    dk = {k: k1.get(k, 0) - k0.get(k, 0) for k in ("drop", "insert_failed", "early_drop", "insert")}
    table_full = dk["drop"] - dk["insert_failed"]
    lat.sort()
    half = 30 * a.minutes
    res = {
        "minutes": a.minutes, "scrapers": a.scrapers,
        "churn": {"namespaces": churn.made_ns, "floods": churn.floods, "flood_packets": churn.flood_sent,
                  "flushes": churn.flushes, "source_flows": churn.flows},
        "rss_mib": {w: {"start": r[0][1], "end": r[-1][1], "max": max(x[1] for x in r),
                        "slope_mib_per_hour_2nd_half": slope_per_hour([x for x in r if x[0] >= half])}
                    for w, r in rss.items()},
        "bpf_maps": {f"{ours[i]}#{i}": {"start": v[0], "max": max(v), "end": v[-1]} for i, v in occ.items()},
        "scrapes": {"answered": len(lat), "failed": len(fails), "failures": fails[:5],
                    "median_s": statistics.median(lat) if lat else None,
                    "p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None, "max_s": lat[-1] if lat else None,
                    "sample_age_max_s": max(ages) if ages else None},
        "totals": {"kernel_table_full": table_full,
                   "serve_table_full_since_boot": metric(body, "cttrace_conntrack_drops_total", 'reason="table_full"'),
                   "kernel_table_full_since_boot": k1.get("drop", 0) - k1.get("insert_failed", 0),
                   "top_table_full": last.get("totals", {}).get("table_full"),
                   "kernel_entries": count,
                   "serve_entries": metric(body, "cttrace_source_entries"),
                   "top_tracked": last.get("tracked"),
                   "top_exact": last.get("freshness", {}).get("exact"),
                   "serve_source_drops": metric(body, "cttrace_source_drops_total"),
                   "kernel_drop": dk["drop"]},
    }
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
