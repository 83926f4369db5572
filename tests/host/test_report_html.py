"""The HTML report of a real capture (the lab: three containers, a load and
a table-full burst), rendered by headless Chromium: screenshots kept as
artefacts of the run ($CTTRACE_ARTIFACTS), and the rendered DOM checked
against the kernel and the capture: time ticks present and in order on
every chart, the burst mark inside the drops' time range, findings most
severe first, the summary naming the burst's source and its kernel count."""

import gzip
import json
import re
import subprocess
import time
from html.parser import HTMLParser

import pytest

from tests import chromium
from tests.host.conftest import CTTRACE, lab_fixture, start_capture

PREFIX = "ctlabrep-"
SEVERITIES = ("critical", "warning", "info")

pytestmark = [pytest.mark.usefixtures("needs_tracepoint"),
              pytest.mark.skipif(not chromium.CHROMIUM, reason="needs Chromium (apt-get install chromium)")]
lab = lab_fixture(PREFIX, containers=3)


class Dom(HTMLParser):
    """What the checks read from the rendered page, in document order."""

    def __init__(self):
        super().__init__()
        self.charts: list[dict] = []          # per <svg>: its class, tick times, burst marks
        self.findings: list[str] = []
        self.summary: list[str] = []
        self._in_summary = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "svg":
            self.charts.append({"class": cls, "ticks": [], "bursts": [], "hover": 0})
        elif tag == "g" and cls == "tick":
            self.charts[-1]["ticks"].append(float(a["data-t"]))
        elif tag == "rect" and cls == "burst":
            self.charts[-1]["bursts"].append((float(a["data-first"]), float(a["data-last"])))
        elif tag == "rect" and cls == "hover":
            self.charts[-1]["hover"] += 1
        elif tag == "div" and "data-severity" in a:
            self.findings.append(a["data-severity"])
        elif tag == "section" and a.get("id") == "summary":
            self._in_summary = 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._in_summary = 0

    def handle_data(self, data):
        if self._in_summary and data.strip():
            self.summary.append(data.strip())


def test_report_of_a_real_burst_in_chromium(lab, tmp_path):
    c1, c2, c3 = lab.containers
    cap = tmp_path / "lab.ctcap"
    ready = tmp_path / "ready"
    before = lab.node_stats()
    p = start_capture(lab.node, cap, 12, ready)
    lab.tcp_established(c2, 40)                       # a load: long connections and UDP flows
    lab.udp_flows(c3, 150, rate=100)
    time.sleep(1.5)
    t_burst0 = time.time()
    burst = lab.table_full(c1, k=200, admit=80)
    t_burst1 = time.time()
    p.wait(60)
    assert p.returncode == 0, p.stderr.read()
    after = lab.node_stats()
    assert burst.kernel_drop > 0

    page = tmp_path / "report.html"
    r = subprocess.run([CTTRACE, "report", str(cap), "--html", str(page), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    art = chromium.artifacts()
    (art / "report-lab.html").write_text(page.read_text())
    chromium.screenshot(page, art / "report-lab.png", tmp_path / "profile")
    chromium.screenshot(page, art / "report-lab-narrow.png", tmp_path / "profile", size="700,1400")
    pdf = chromium.print_pdf(page, art / "report-lab.pdf", tmp_path / "profile")
    assert pdf.read_bytes().count(b"/Type /Page") - pdf.read_bytes().count(b"/Type /Pages") >= 2
    dom = Dom()
    dom.feed(chromium.dump_dom(page, tmp_path / "profile"))

    # no network, no script
    text = page.read_text()
    assert not re.search(r"<script|<link|<img|@import|url\(|https?://", text)
    # the numbers are the kernel's
    assert rep["totals"]["drops"] == after["drop"] - before["drop"] == burst.kernel_drop
    # charts: fill, drops, inserts, entries by container; each with time ticks in order,
    # inside the capture, and a hover column per point
    t0 = rep["capture"]["started"]
    t1 = t0 + rep["capture"]["seconds"] + rep["timeline_seconds_per_point"]
    assert [c["class"].split()[-1] for c in dom.charts] == ["fill", "drops", "inserts", "mix"]
    for c in dom.charts:
        assert len(c["ticks"]) >= 3, c
        assert c["ticks"] == sorted(c["ticks"]) and len(set(c["ticks"])) == len(c["ticks"])
        assert t0 - 1e-3 <= c["ticks"][0] and c["ticks"][-1] <= t1 + 1e-3
        assert c["hover"] >= 1
    assert dom.charts[0]["hover"] == len([x for x in rep["timeline"] if x["count"] is not None])
    # the burst: marked on every chart, inside the time the drops happened (the
    # capture's drop records, and the lab's own clock around the burst)
    drops = [json.loads(l) for l in gzip.open(cap, "rt") if '"k":"drop"' in l]
    assert drops
    d0, d1 = min(d["t"] for d in drops), max(d["t"] for d in drops)
    assert t_burst0 - 1 <= d0 <= d1 <= t_burst1 + 1
    for c in dom.charts:
        assert len(c["bursts"]) == 1, c
        first, last = c["bursts"][0]
        assert d0 - 1e-3 <= first <= last <= d1 + 1e-3
    # findings: most severe first, and the same order as the JSON
    assert dom.findings == [f["severity"] for f in rep["findings"]]
    assert dom.findings == sorted(dom.findings, key=SEVERITIES.index)
    assert "critical" in dom.findings
    # the summary says it in plain words: how many, from whom, when, at which limit
    who = rep["drops_by_container"][0]["name"]
    assert who in (c1, lab.container_ip(c1))
    first = dom.summary[0]
    tf = rep["totals"]["table_full"]
    assert first.startswith(f"{tf:,} table-full drops from {who} between ")
    assert re.search(r"between \d\d:\d\d:\d\d(\.\d)? and \d\d:\d\d:\d\d(\.\d)?, table at its limit of [\d,]+\.", first), first
    # the entries-by-container chart holds the lab's containers
    keys = rep["entries_by_source"]["keys"]
    assert {lab.container_ip(c2), c2} & set(keys) and {lab.container_ip(c1), c1} & set(keys)
