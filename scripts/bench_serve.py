#!/usr/bin/env python3
"""Benchmark `cttrace serve` under many sources (not a test).

  sudo .venv/bin/python scripts/bench_serve.py [--sources 10000] [--rounds 3] [--top-k 20]

In the lab, the peer gets --sources extra addresses (198.19.128.0/17) per
round and sends one UDP packet from each to the node, so the node's table
holds that many distinct sources; rounds use new addresses while the old
entries expire (UDP timeout lowered to 5 s in the node), so sources come
and go. `serve` exports the node; after each round the bench scrapes
/metrics, counts the series of each per-source metric (bound: K+1) and
reads the exporter's resident memory.
"""

import argparse
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import lab as L  # noqa: E402
from tracer.kernel import netns  # noqa: E402

CTTRACE = str(ROOT / ".venv" / "bin" / "cttrace")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=20)
    a = ap.parse_args()
    L.lab_down("ctbench-")
    with tempfile.TemporaryDirectory() as tmp, L.Lab(containers=1, prefix="ctbench-") as lab:
        with netns.entered(lab.node):
            Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").write_text("5")
        L.sh("ip", "route", "add", "198.19.128.0/17", "via", L.UPLINK_PEER, ns=lab.node)
        port = 19466
        ready = Path(tmp) / "ready"
        p = subprocess.Popen([CTTRACE, "serve", "--netns", lab.node, "--listen", f"127.0.0.1:{port}",
                              "--top-k", str(a.top_k), "--interval", "1", "--ready-file", str(ready)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not ready.exists():
            if p.poll() is not None:
                sys.exit("bench: serve did not start")
            time.sleep(0.05)
        base = 128 << 8
        for rnd in range(a.rounds):
            addrs = [f"198.19.{(base + i) >> 8}.{(base + i) & 255}" for i in range(rnd * a.sources, (rnd + 1) * a.sources)]
            batch = "".join(f"addr add {ip}/32 dev lo\n" for ip in addrs)
            subprocess.run(["ip", "-n", lab.peer, "-batch", "-"], input=batch, text=True, check=True)
            t0 = time.perf_counter()
            with netns.entered(lab.peer):
                for ip in addrs:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((ip, 40000))
                    s.sendto(b"x", (L.UPLINK_NODE, 9999))
                    s.close()
            made = time.perf_counter() - t0
            time.sleep(3)                                   # a few samples and events in
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            per = Counter(m.group(1) for m in re.finditer(r"^(cttrace_source_\w+)\{", body, re.M))
            print(f"round {rnd + 1}: {a.sources:,} new sources in {made:.1f} s; node table "
                  f"{lab.node_count():,} entries; series per metric: "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(per.items()))} (bound {a.top_k + 1}); "
                  f"exporter RSS {rss_mib(p.pid):.0f} MiB")
            time.sleep(7)                                   # the round's entries expire
        p.send_signal(signal.SIGTERM)
        p.wait(30)


if __name__ == "__main__":
    main()
