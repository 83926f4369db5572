"""The live forecast of `top --json` and `serve` against a lab run whose
fill curve the test knows: a namespace with nf_conntrack_udp_timeout=T, a
burst of UDP flows (no replies) already in the table, then a generator at a
fixed rate, against a known global nf_conntrack_max.

The burst expires 10 s after the generator starts, so a straight line from
the count (burst + generator, rising at the generator's rate) says the
table is full far sooner than it is. The truth is computed from the
test's own send times (each flow lives T s after it was sent), and the
moment the kernel's count reaches the limit is measured too.

Run under the host lock: nf_conntrack_max is global (saved and restored)."""

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE, wait_ready
from tests.host.test_forecast import Generator as _Generator, burst, truth_full
from tracer.kernel import netns

pytestmark = pytest.mark.usefixtures("needs_tracepoint")

T = 30            # nf_conntrack_udp_timeout in the test's namespace
BURST = 3000      # flows 127.0.0.9 -> 127.0.0.1:5000, sent before top starts
LEFT = 10         # seconds the burst has left when the generator starts
RATE = 200.0      # generator: new flows per second 127.0.0.10 -> 127.0.0.1:6000
M1 = int(1.3 * RATE * T)    # 7,800: the table levels at RATE * T = 6,000 below it
M2 = 5500                   # reached 27.5 s after the generator starts (the burst gone at 10 s)
CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
CT_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"


class Generator(_Generator):
    """The doctor test's generator; a flow the full table refuses (EPERM)
    is counted, not raised, and not taken as sent."""

    def __init__(self, ns: str, rate: float):
        super().__init__(ns, rate)
        self.refused = 0
        self.first_refused: float | None = None

    def run(self):
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            d = t0 + i / self.rate - time.monotonic()
            if d > 0:
                time.sleep(d)
            with netns.entered(self.ns):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.10", 20000 + i % 40000))
                s.sendto(b"g", ("127.0.0.1", 6000))
                self.sent.append(time.monotonic())
            except PermissionError:
                self.refused += 1
                if self.first_refused is None:
                    self.first_refused = time.monotonic()
            finally:
                s.close()
            i += 1


@pytest.fixture
def ns():
    root = int(Path(CT_COUNT).read_text())
    if root + 500 > M2:
        pytest.skip(f"this host's own table holds {root} entries: a global limit of {M2} would drop its traffic")
    old_max = CT_MAX.read_text().strip()
    with L.Netns("fl") as n:
        n.sysctl("net.netfilter.nf_conntrack_udp_timeout", str(T))
        try:
            yield n
        finally:
            CT_MAX.write_text(old_max)


class Frames(threading.Thread):
    """`cttrace top --json` frames, each with the monotonic time it was made."""

    def __init__(self, p):
        super().__init__(daemon=True)
        self.p, self.frames = p, []

    def run(self):
        for line in self.p.stdout:
            if line.strip():
                f = json.loads(line)
                f["_mono"] = time.monotonic() - max(time.time() - f["ts"], 0.0)
                self.frames.append(f)

    def after(self, t: float, deadline: float = 10.0, **want) -> dict:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for f in self.frames:
                if f["_mono"] >= t and all(f.get(k) == v for k, v in want.items()):
                    return f
            time.sleep(0.05)
        raise AssertionError(f"no frame after {t} with {want}: {self.frames[-1:] or 'none'}")


@pytest.mark.parametrize("events", ["auto", "off"])
def test_top_time_to_full_and_not_filling(ns, tmp_path, events):
    """events auto: new entries from NEW events; off: no event at all, the
    schedule from a reconcile dump every second and the insert rate from
    the count's growth plus what the schedule let expire."""
    if events == "off":
        ns.sysctl("net.netfilter.nf_conntrack_events", "0")
    CT_MAX.write_text(str(M1))
    sent = burst(ns.name, BURST)
    ready = tmp_path / "ready"
    p = subprocess.Popen([CTTRACE, "top", "--json", "--interval", "1", "--netns", ns.name,
                          "--ready-file", str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    fr = Frames(p)
    fr.start()
    gen = Generator(ns.name, RATE)
    try:
        wait_ready(p, ready)
        g0 = sent[-1] + T - LEFT
        assert time.monotonic() < g0 - 2, "top took too long to start"
        time.sleep(g0 - time.monotonic())
        gen.start()

        # not filling: at +4.5 s the count rises by RATE/s (a straight line
        # says full at M1 in ~20 s), but the burst leaves at +10 s and the
        # table levels at RATE * T = 6,000
        f = fr.after(g0 + 4.5, max=M1)
        fc = f["forecast"]
        both = sent + list(gen.sent)
        assert truth_full(both, f["_mono"], M1, RATE, life=T) is None
        assert fc["filling"] is False, fc
        assert fc["rate_low"] * T <= fc["steady"] <= fc["rate_high"] * T and fc["steady"] < M1, fc
        assert fc["rate_low"] <= RATE <= fc["rate_high"], fc
        assert fc["rate_from"] == ("events" if events == "auto" else "count growth"), fc
        assert fc["schedule_age_s"] < 5 and fc["new_kind"] == "udp/UNREPLIED" and fc["life"] == T
        assert fc["expiring"]["10s"] >= BURST, fc
        before = fr.after(g0 + 2)                     # the count rises: a line says filling
        assert (f["count"] - before["count"]) / (f["_mono"] - before["_mono"]) > RATE / 2, (before, f)

        # filling: M2 is reached 27.5 s after the generator started
        CT_MAX.write_text(str(M2))
        f = fr.after(time.monotonic(), max=M2)
        fc = f["forecast"]
        t_ref = f["_mono"]
        assert t_ref < g0 + LEFT - 0.5, "the frame came after the burst expired"
        truth = truth_full(sent + list(gen.sent), t_ref, M2, RATE, life=T)
        assert truth is not None and fc["filling"], (fc, truth)
        assert fc["low"] - 1 <= truth <= fc["high"] + 1, (fc, truth)
        assert fc["high"] - fc["low"] < 0.3 * truth, fc               # a useful band
        # a straight line from the count at the net rate says much sooner
        assert (M2 - f["count"]) / RATE < fc["low"] / 2, (f["count"], fc)
        # the kernel: its count reaches the limit within the band
        while int(ns.read(CT_COUNT)) < M2:
            assert time.monotonic() < t_ref + fc["high"] + 10, (fc, int(ns.read(CT_COUNT)))
            time.sleep(0.02)
        kernel = time.monotonic() - t_ref
        assert fc["low"] - 2 <= kernel <= fc["high"] + 2, (fc, kernel, truth)
        print(f"events {events}: forecast at +{t_ref - g0:.1f} s: {fc['seconds']:.1f} s ({fc['low']:.1f}-{fc['high']:.1f}); "
              f"truth {truth:.1f} s; kernel full after {kernel:.1f} s")
    finally:
        gen.stop.set()
        if gen.is_alive():
            gen.join()
        p.send_signal(signal.SIGINT)
        p.wait(30)
    assert p.returncode == 0, p.stderr.read()


def _metric(port: int, name: str) -> float:
    import urllib.request
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_serve_seconds_to_full(ns, tmp_path):
    """+Inf with no new flows; with the generator on, the time to full the
    generator's own send times give lies within the exported band."""
    CT_MAX.write_text(str(M2))       # at RATE, reached 27.5 s after the generator starts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = tmp_path / "ready"
    srv = subprocess.Popen([CTTRACE, "serve", "--netns", ns.name, "--listen", f"127.0.0.1:{port}",
                            "--interval", "0.5", "--ready-file", str(ready)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    gen = Generator(ns.name, RATE)
    try:
        wait_ready(srv, ready)
        time.sleep(1.5)
        assert _metric(port, "cttrace_conntrack_seconds_to_full") == float("inf")
        gen.start()
        time.sleep(4)
        t_ref = time.monotonic()
        v = _metric(port, "cttrace_conntrack_seconds_to_full")
        lo = _metric(port, "cttrace_conntrack_seconds_to_full_low")
        hi = _metric(port, "cttrace_conntrack_seconds_to_full_high")
        age = _metric(port, "cttrace_conntrack_forecast_schedule_age_seconds")
        mx = int(ns.read("/proc/sys/net/netfilter/nf_conntrack_max"))
        truth = truth_full(list(gen.sent), t_ref, mx, RATE, life=T)
        assert truth is not None and 0 < lo <= v <= hi < float("inf"), (lo, v, hi)
        assert lo - 1 <= truth <= hi + 1, (lo, v, hi, truth)
        assert 0 <= age < 60
    finally:
        gen.stop.set()
        if gen.is_alive():
            gen.join()
        srv.terminate()
        srv.wait(timeout=30)
