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

Reported: the RSS and open fds of serve and top (start, middle, end; RSS
slope over the second half of the run, MiB per hour), the occupancy of the
BPF maps each process holds (found by its fds' map_id in /proc/PID/fdinfo;
entries counted with `bpftool map dump` every minute: start, largest, end,
against the map's max_entries), serve's and top's exact totals against the
kernel's counters once the churn stops, every scrape answered or not, scrape
latency (median, p99, max), the pump loop's sample age seen by scrapes, and
serve's table_full checked on EVERY answered scrape (parsed with
prometheus_client's text parser) against the kernel's drop - (insert_failed
- chaintoolong), read just before and just after that scrape: the scrape's
value must lie between the two.
"""

import argparse
import json
import os
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

from prometheus_client.parser import text_string_to_metric_families

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


def kernel_stats(ns: str | None = None, pid: int | None = None) -> dict[str, int]:
    """The namespace's per-CPU stats summed: entered by name, or read
    through /proc/PID/net of a process living in it (any thread may)."""
    if pid is not None:
        lines = Path(f"/proc/{pid}/net/stat/nf_conntrack").read_text().split("\n")
    else:
        with netns.entered(ns):
            lines = Path("/proc/net/stat/nf_conntrack").read_text().split("\n")
    head = lines[0].split()
    out: dict[str, int] = {}
    for line in lines[1:]:
        if line.strip():
            for k, v in zip(head, line.split()):
                out[k] = out.get(k, 0) + int(v, 16)
    return out


def table_full(k: dict[str, int]) -> int:
    """The kernel's table-full drops (tracer/core/counters.py's formula)."""
    return k.get("drop", 0) - max(k.get("insert_failed", 0) - k.get("chaintoolong", 0), 0)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def owned_maps(pid: int) -> set[int]:
    """Ids of the BPF maps a process holds an fd of (fdinfo's map_id)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            m = re.search(r"^map_id:\s+(\d+)", Path(f"/proc/{pid}/fdinfo/{fd}").read_text(), re.M)
        except OSError:
            continue
        if m:
            out.add(int(m.group(1)))
    return out


def map_info(mid: int) -> dict:
    r = subprocess.run(["bpftool", "map", "show", "id", str(mid), "-j"], capture_output=True, text=True)
    try:
        m = json.loads(r.stdout)
    except ValueError:
        return {"name": "?", "type": "?", "max_entries": None}
    return {"name": m.get("name", ""), "type": m.get("type", ""), "max_entries": m.get("max_entries")}


def map_entries(mid: int) -> int:
    """Entries in a map (-1: bpftool cannot dump it, e.g. a perf event array)."""
    r = subprocess.run(["bpftool", "map", "dump", "id", str(mid), "-j"], capture_output=True, text=True)
    try:
        return len(json.loads(r.stdout or "[]")) if r.returncode == 0 else -1
    except ValueError:
        return -1


def samples(body: str) -> list:
    """Every sample of a /metrics body (prometheus_client's own parser)."""
    return [x for fam in text_string_to_metric_families(body) for x in fam.samples]


def metric(parsed: list, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(x.value for x in parsed
               if x.name == name and all(x.labels.get(k) == v for k, v in labels.items()))


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


def scraper(stop: threading.Event, lat: list, fails: list, ages: list, check: dict, holder: int):
    """Scrape back to back; each answer's table_full against the kernel's,
    read just before the request and just after the answer."""
    while not stop.is_set():
        before = table_full(kernel_stats(pid=holder))
        t0 = time.perf_counter()
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30).read().decode()
        except Exception as e:
            fails.append(f"{type(e).__name__}: {e}")
            time.sleep(0.1)
            continue
        lat.append(time.perf_counter() - t0)
        after = table_full(kernel_stats(pid=holder))
        try:
            parsed = samples(body)
        except ValueError as e:
            check["unparsed"].append(str(e)[:200])
            continue
        ages.append(metric(parsed, "cttrace_last_sample_age_seconds"))
        v = metric(parsed, "cttrace_conntrack_drops_total", reason="table_full")
        with check["lock"]:
            check["checked"] += 1
            check["max_seen"] = max(check["max_seen"], v)
            if not before <= v <= after:
                check["bad"].append({"serve": v, "kernel_before": before, "kernel_after": after})


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
        holder = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "infinity"])
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
            ours = {i: {"owner": w, **map_info(i)} for w, p in procs.items() for i in owned_maps(p.pid)}
            occ = {i: [map_entries(i)] for i in ours}
            fdn = {w: [fds(p.pid)] for w, p in procs.items()}
            Path(CT_MAX).write_text(str(a.max))
            churn = Churn(ns, a.max).start()
            stop = threading.Event()
            lat: list = []
            fails: list = []
            ages: list = []
            check = {"lock": threading.Lock(), "checked": 0, "max_seen": 0.0, "bad": [], "unparsed": []}
            scr = [threading.Thread(target=scraper, args=(stop, lat, fails, ages, check, holder.pid), daemon=True)
                   for _ in range(a.scrapers)]
            for t in scr:
                t.start()
            t0 = time.monotonic()
            rss = {w: [] for w in procs}
            end = t0 + 60 * a.minutes
            next_maps = t0
            mid = False
            while time.monotonic() < end:
                now = time.monotonic() - t0
                for w, p in procs.items():
                    if p.poll() is not None:
                        sys.exit(f"soak: {w} exited ({p.returncode}) after {now:.0f} s: "
                                 f"{(tmp / f'{w}.err').read_text()[-600:]}")
                    rss[w].append((now, mem(p.pid)))
                    if not mid and now >= 30 * a.minutes:
                        fdn[w].append(fds(p.pid))
                mid = mid or now >= 30 * a.minutes
                if time.monotonic() >= next_maps:
                    for i in ours:
                        occ[i].append(map_entries(i))
                    next_maps += 60
                    print(f"soak: {now / 60:.1f} min, RSS serve {rss['serve'][-1][1]:.0f} MiB top "
                          f"{rss['top'][-1][1]:.0f} MiB, scrapes {len(lat)} ({len(fails)} failed), "
                          f"namespaces made {churn.made_ns}, floods {churn.floods}, flushes {churn.flushes}, "
                          f"table_full checked {check['checked']} ({len(check['bad'])} off the kernel, "
                          f"largest {check['max_seen']:.0f})", flush=True)
                time.sleep(10)
            churn.stop()
            Path(CT_MAX).write_text(old_max)
            stop.set()
            for t in scr:
                t.join(60)
            time.sleep(8)                       # the last events and a sample
            body = samples(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30).read().decode())
            k1 = kernel_stats(ns.name)
            count = ns.count()
            for i in ours:
                occ[i].append(map_entries(i))
            for w, p in procs.items():
                fdn[w].append(fds(p.pid))
        finally:
            Path(CT_MAX).write_text(old_max)
            holder.kill()
            holder.wait()
            for p in procs.values():
                p.send_signal(signal.SIGINT)
            for p in procs.values():
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        frames = [json.loads(x) for x in (tmp / "top.out").read_text().splitlines() if x.strip()]
        last = frames[-1] if frames else {}
    dk = {k: k1.get(k, 0) - k0.get(k, 0) for k in ("drop", "insert_failed", "chaintoolong", "early_drop", "insert")}
    tf = table_full(dk)
    nrss = {w: len(r) for w, r in rss.items()}
    lat.sort()
    half = 30 * a.minutes
    res = {
        "minutes": a.minutes, "scrapers": a.scrapers,
        "churn": {"namespaces": churn.made_ns, "floods": churn.floods, "flood_packets": churn.flood_sent,
                  "flushes": churn.flushes, "source_flows": churn.flows},
        "rss_mib": {w: {"start": r[0][1], "middle": r[nrss[w] // 2][1], "end": r[-1][1],
                        "max": max(x[1] for x in r),
                        "slope_mib_per_hour_2nd_half": slope_per_hour([x for x in r if x[0] >= half])}
                    for w, r in rss.items()},
        "fds": {w: dict(zip(("start", "middle", "end"), v)) for w, v in fdn.items()},
        "bpf_maps": {f"{m['owner']}:{m['name']}#{i}": {"type": m["type"], "max_entries": m["max_entries"],
                                                       "start": occ[i][0], "max": max(occ[i]), "end": occ[i][-1]}
                     for i, m in sorted(ours.items(), key=lambda kv: (kv[1]["owner"], kv[1]["name"]))},
        "scrapes": {"answered": len(lat), "failed": len(fails), "failures": fails[:5],
                    "median_s": statistics.median(lat) if lat else None,
                    "p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None, "max_s": lat[-1] if lat else None,
                    "sample_age_max_s": max(ages) if ages else None},
        "table_full_per_scrape": {"checked": check["checked"], "off_the_kernel": len(check["bad"]),
                                  "first_off": check["bad"][:5], "largest_seen": check["max_seen"],
                                  "unparsed": check["unparsed"][:5]},
        "totals": {"kernel_table_full": tf,
                   "serve_table_full_since_boot": metric(body, "cttrace_conntrack_drops_total", reason="table_full"),
                   "kernel_table_full_since_boot": table_full(k1),
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
