"""The reference in docs/ and the code agree, both ways: every doctor
finding id, every Prometheus metric and every JSON key of `top --json`,
`drops --json`, `doctor --json` and `report --json` that the code makes is
documented, and nothing documented is gone from the code.

The code side comes from the code itself: finding ids from the doctor's
`add("<id>", ...)` calls (f-string ids expanded from the tables they loop
over), metric names from a real scrape of the exporter's Collector, JSON
keys from real objects built by the functions the commands call, on small
made-up inputs (as the other unit tests build them).

The docs side: a finding is a heading "### `id`" in docs/doctor.md, a
metric a heading "### `name`" in docs/metrics.md, a JSON key a row of a
table in docs/json.md under the command's heading, its first cell the key's
path in backticks (`a.b`, `a[].b` for the objects of a list, `a.*` for a
map or an object not listed key by key). A row whose type cell says
"optional" is a key that only some outputs have."""

import json
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.clirunner import runner
from tests.unit.test_capture_report import make_capture
from tracer.cli import main
from tracer.core import doctor, forecast
from tracer.core.conntrack import F_UNREPLIED
from tracer.core.events import Counters, Drop, SourceCounts
from tracer.kernel.stats import TableState
from tracer.live.exporter import Collector, DestinationDrops, SourceSeries
from tracer.live.session import Options, TracingSession
from tracer.views.drops import interval_record

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
IDENT = re.compile(r"^[a-z][a-z0-9_]*$")

pytestmark = pytest.mark.usefixtures("utc")


# ---- finding ids ---------------------------------------------------------

def code_finding_ids() -> set[str]:
    """Every id the doctor's rules can give: `Finding("id", ...)` and
    `Finding(f"..{x}..", ...)` in tracer/core (doctor.py, nat.py, and any
    module that adds findings)."""
    expand = {"tag": [tag for _, tag in doctor.TUNNELS.values()],
              "name": list(forecast.CANDIDATES)}
    ids = set()
    for path in (ROOT / "tracer" / "core").glob("*.py"):
        for m in re.finditer(r'\bFinding\(\s*(f?)"([a-z0-9_{}]+)"', path.read_text()):
            f, text = m.groups()
            var = re.search(r"\{(\w+)\}", text) if f else None
            if var is None:
                ids.add(text)
                continue
            assert var.group(1) in expand, \
                f"{path.name}: finding id {text}: add the values of {{{var.group(1)}}} to this test's expand"
            ids |= {text.replace(var.group(0), v) for v in expand[var.group(1)]}
    return ids


def doc_headings(page: str) -> set[str]:
    return set(re.findall(r"^### `([a-z0-9_]+)`", (DOCS / page).read_text(), re.M))


def test_every_finding_id_is_documented_and_every_documented_one_exists():
    code, docs = code_finding_ids(), doc_headings("doctor.md")
    assert len(code) >= 20
    assert code - docs == set(), "finding ids in the code but not in docs/doctor.md"
    assert docs - code == set(), "finding ids in docs/doctor.md but not in the code"


# ---- metrics -------------------------------------------------------------

def scrape() -> str:
    """A real scrape of the exporter's Collector over a session with fake
    readings (a forecast schedule in, so every family is there)."""
    s = TracingSession("serve", Options())
    sched = forecast.Schedule(time.monotonic() - 10.0, {"udp_timeout": 30})
    dst = socket.inet_aton("198.18.1.1")
    sched.rows([(17, None, socket.inet_aton("198.18.0.1"), dst, 53, F_UNREPLIED, (0, 0), 1000 + i, None, 20)
                for i in range(100)], sched.t0)
    sched.end(sched.t0)
    src = type("Src", (), {})()
    src.mode = 2
    src.entries = type("L", (), {"sched": sched, "dnat": {"198.18.1.2": 3}, "by": {"src": {"198.18.0.1": 100}}})()
    src.overruns_since = lambda t: False
    src.clock = time.monotonic
    src.dumps, src.dump_seconds = {"events_lost": 1}, 4.0
    s.feed = src
    state = TableState(count=100, max=1000, buckets=64, cpu=[{"cpu": 0, "drop": 3}])
    s.read_table = lambda: state
    s.kernel_totals = lambda st: {"drop": 3, "insert_failed": 1, "early_drop": 0, "table_full": 2}
    s.backend = type("B", (), {"counters": staticmethod(lambda: Counters("fake")), "name": "fake"})()
    s.lost = lambda: {"events": 0, "over_rate_limit": 0, "bpf_map_full": 0}
    s.names = type("N", (), {"ip": staticmethod(lambda a: None), "meta": staticmethod(lambda n: {})})()
    s.inum = 1
    reg = CollectorRegistry()
    dst_drops = DestinationDrops()
    dst_drops.add([SimpleNamespace(proto="udp", dport=8080, dst_container="web")])
    reg.register(Collector(s, SourceSeries(), threading.Lock(), "6.18", dst_drops))
    return generate_latest(reg).decode()


def code_metric_shapes() -> dict[str, tuple[str, frozenset]]:
    """name -> (type, label names) from the scrape's TYPE lines and samples
    (a counter's TYPE line names it with or without _total, by
    prometheus_client's version; its samples always end in _total)."""
    out, text = {}, scrape()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        full = name + "_total" if kind == "counter" and not name.endswith("_total") else name
        labels: set = set()
        for m in re.finditer(rf"^{re.escape(full)}(?:\{{([^}}]*)\}})? ", text, re.M):
            labels |= set(re.findall(r'(\w+)="', m.group(1) or ""))
        out[full] = (kind, frozenset(labels))
    return out


def doc_metric_shapes() -> dict[str, tuple[str, frozenset]]:
    """name -> (type, label names) from docs/metrics.md: the first sentence
    under each heading, "Counter, labels `a`, `b`." or "Gauge, no labels."."""
    text = (DOCS / "metrics.md").read_text()
    out = {}
    for m in re.finditer(r"^### `([a-z0-9_]+)`\n(.*?)\.", text, re.M | re.S):
        first = m.group(2)
        kind = first.split(",")[0].strip().lower()
        labels = frozenset(re.findall(r"`(\w+)`", first)) if "label" in first else frozenset()
        out[m.group(1)] = (kind, labels)
    return out


def test_every_metric_is_documented_and_every_documented_one_exists():
    code, docs = code_metric_shapes(), doc_metric_shapes()
    assert len(code) >= 15
    assert set(code) - set(docs) == set(), "metrics in the code but not in docs/metrics.md"
    assert set(docs) - set(code) == set(), "metrics in docs/metrics.md but not in the code"
    wrong = {n: (code[n], docs[n]) for n in code if code[n] != docs[n]}
    assert wrong == {}, "metrics whose type or labels differ (code, docs/metrics.md)"


# ---- JSON keys -----------------------------------------------------------

def doc_keys(heading: str) -> tuple[set[str], set[str]]:
    """(every documented path, the optional ones) of the section of
    docs/json.md whose "## " heading contains `heading`."""
    text = (DOCS / "json.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    body = [s for s in sections[1:] if heading in s.splitlines()[0]]
    assert len(body) == 1, f"docs/json.md: one '## ' heading with {heading!r}"
    keys, optional = set(), set()
    for m in re.finditer(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|", body[0], re.M):
        keys.add(m.group(1))
        if "optional" in m.group(2):
            optional.add(m.group(1))
    return keys, optional


def paths(obj, maps: set[str], p: str = "", out: set | None = None) -> set[str]:
    """Every key path of a JSON value: `a.b`, `a[].b` inside lists; a dict
    documented as a map (`p.*`) or keyed by data (addresses, "udp/53") is
    `p.*` and not walked."""
    out = set() if out is None else out
    if isinstance(obj, dict):
        if p and (p + ".*" in maps or not all(IDENT.match(k) for k in obj)):
            out.add(p + ".*")
            return out
        for k, v in obj.items():
            q = f"{p}.{k}" if p else k
            out.add(q)
            paths(v, maps, q, out)
    elif isinstance(obj, list):
        for v in obj:
            paths(v, maps, p + "[]", out)
    return out


def check(heading: str, objs: list) -> None:
    docs, optional = doc_keys(heading)
    docs |= {p[:-2] for p in docs if p.endswith(".*")}     # a map's own key
    optional |= {p[:-2] for p in optional if p.endswith(".*")}
    code = set()
    for o in objs:
        code |= paths(o, docs)
    assert code - docs == set(), f"keys of {heading} in the code but not in docs/json.md"
    assert docs - optional - code == set(), \
        f"keys of {heading} in docs/json.md that the code did not make (mark them optional if they are)"


def test_top_json_keys(session_frame):
    f = session_frame(events_mode=2)              # top_frame() of a real session's live_state()
    f.pop("history", None)                        # as cli/top.py prints it: the sparklines are for the screen
    json.dumps(f)
    check("`top --json`", [f])


def test_drops_json_keys():
    d = Drop(ts=1700000000.0, netns=7, cpu=0, family="ipv4", proto="udp", src="198.18.0.1",
             sport=1000, dst="198.18.1.1", dport=53, reason="insert_failed", ct_attached=True,
             container="web-1", translated=("198.18.0.254", 20000, "198.18.1.1", 53))
    plain = Drop(ts=1700000000.5, netns=7, cpu=1, family="ipv4", proto="udp", src="198.18.0.2",
                 sport=1001, dst="198.18.1.1", dport=53, reason="table_full", ct_attached=False)
    c = Counters(backend="fake", sources=[SourceCounts(7, "198.18.0.1", table_full=4)])
    summary = {"summary": {"backend": "fake", "shown": 2, **c.to_dict()}}   # as cli/drops.py writes it
    check("`drops --json`", [d.to_dict(), plain.to_dict(), interval_record(time.time(), 1.0, [d, plain]),
                             json.loads(json.dumps(summary))])


def test_doctor_and_report_json_keys(tmp_path):
    cap = make_capture(tmp_path / "c")
    r = runner().invoke(main, ["doctor", "--capture", str(cap), "--json"])
    assert r.exit_code == 0, r.output
    # an export of 150 UDP flows of one source idle 25 s: heavy_source and
    # shorter_udp_timeout, with who their fixes cut
    export = tmp_path / "e.txt"
    export.write_text("".join(
        f"udp      17 5 src=10.0.0.1 dst=10.0.0.9 sport={1000 + i} dport=53 [UNREPLIED] "
        f"src=10.0.0.9 dst=10.0.0.1 sport=53 dport={1000 + i} mark=0 use=1\n" for i in range(150)))
    e = runner().invoke(main, ["doctor", "--file", str(export), "--json"])
    assert e.exit_code == 0, e.output
    from_export = json.loads(e.stdout)
    assert any(c["top_sources"] for f in from_export["findings"] for c in f["cuts"])
    check("`doctor --json`", [json.loads(r.stdout), from_export])
    r = runner().invoke(main, ["report", str(cap), "--json"])
    assert r.exit_code == 0, r.output
    check("`report --json`", [json.loads(r.stdout)])


# ---- capture record kinds --------------------------------------------------

def test_every_capture_record_kind_is_documented():
    from tracer.formats import capture
    docs = doc_headings("capture-format.md")
    assert set(capture.KINDS) == docs
    text = (DOCS / "capture-format.md").read_text()
    assert f"| `version` | {capture.VERSION} |" in text and f"| `revision` | {capture.REVISION} |" in text
