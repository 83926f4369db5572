"""`cttrace serve` scraped by a real Prometheus server on loopback, during
the lab's table-full scenario, queried through Prometheus' HTTP API."""

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.host.conftest import CTTRACE, lab_fixture, wait_ready

pytestmark = [pytest.mark.usefixtures("needs_tracepoint"),
              pytest.mark.skipif(not shutil.which("prometheus"), reason="needs prometheus (Debian package)")]
lab = lab_fixture("ctlabsrv-", containers=2)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def query(prom: str, q: str, at: float | None = None) -> float | None:
    params = {"query": q}
    if at is not None:
        params["time"] = f"{at:.3f}"
    with urllib.request.urlopen(f"{prom}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
        res = json.load(r)["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def wait_scrape(prom: str, after: float, timeout: float = 30) -> None:
    """Until Prometheus holds a sample of cttrace taken after `after`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        t = query(prom, "timestamp(cttrace_conntrack_entries)")
        if t is not None and t > after:
            return
        time.sleep(0.3)
    raise AssertionError("Prometheus did not scrape cttrace in time")


def test_prometheus_sees_exact_drops_and_entries(lab, tmp_path):
    port, pport = free_port(), free_port()
    ready = tmp_path / "ready"
    srv = subprocess.Popen([CTTRACE, "serve", "--netns", lab.node, "--listen", f"127.0.0.1:{port}",
                            "--interval", "0.5", "--ready-file", str(ready)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: cttrace\n"
                   f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'db'}",
                             f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{pport}"
    try:
        wait_ready(srv, ready)
        lab.tcp_established(lab.containers[1], 25)
        time.sleep(1.0)
        q = 'cttrace_conntrack_drops_total{reason="table_full"}'
        wait_scrape(url, time.time())
        d0 = query(url, q)                  # the latest sample, before the scenario
        k0 = lab.node_stats()
        r = lab.table_full(lab.containers[0], k=200, admit=80)
        k1 = lab.node_stats()
        time.sleep(1.0)
        t1 = time.time()
        wait_scrape(url, t1)
        d1 = query(url, q)
        assert d1 - d0 == k1["drop"] - k0["drop"] == r.kernel_drop > 0
        assert query(url, "cttrace_conntrack_entries") == lab.node_count()
        src = lab.container_ip(lab.containers[0])
        per_src = query(url, f'cttrace_source_drops_total{{source="{src}"}}')
        assert per_src == len(r.dropped)
        assert query(url, f'cttrace_source_entries{{container="{lab.containers[1]}"}}') == 25
    finally:
        srv.send_signal(signal.SIGTERM)
        prom.terminate()
        srv.wait(30)
        prom.wait(30)
    assert srv.returncode == 0


def test_serve_refuses_a_busy_port(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        r = subprocess.run([CTTRACE, "serve", "--listen", f"127.0.0.1:{s.getsockname()[1]}"],
                           capture_output=True, text=True, timeout=120)
    finally:
        s.close()
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("cttrace: error: cannot serve")
