"""Hostile captures, exports and settings (issue 20, items 2 and 4): each
ends in a result or one error line, within bounded memory; the capture's
state is read with HostState's own annotations (tracer/core/schema.py)."""

import dataclasses
import gzip
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from tests.clirunner import runner

from tracer.cli import main
from tracer.core import schema
from tracer.core.hoststate import HostState
from tracer.formats.capture import Writer, read_capture, state_fields

ROOT = Path(__file__).resolve().parents[2]
HDR = {"host": "h", "kernel": "6.1", "backend": "tracepoint", "netns": "node", "interval": 1.0}
STATE = {"count": 50, "max": 1000, "total": 200, "by_src": {"10.0.0.1": 150}}


def _capture(path, state=STATE, extra=()):
    w = Writer(str(path), {**HDR, "state": state})
    for i in range(3):
        w.write({"k": "stats", "t": 1000.0 + i, "count": 50, "max": 1000, "kernel": {"drop": i}})
    for rec in extra:
        w.write(rec)
    w.write({"k": "end", "t": 1002.0, "totals": {}, "sources": {}, "state": state})
    w.close()
    return path


def _cli(*args):
    r = runner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def _child(args, limit_mib=1024, timeout=120):
    """cttrace in a child under an address-space limit: (rc, stderr, peak RSS MiB)."""
    def lim():
        resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, limit_mib << 20))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-m", "tracer", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, preexec_fn=lim)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return r.returncode, r.stderr, (peak / 1024 if peak > before else None)


# --- item 2: memory -----------------------------------------------------------------------

def _lost_bomb(path, objects=7_000_000, records=3):
    """The review's file: lost records carrying "x": [{}, {}, ...] (each under
    the old 64 MiB record limit); ~40 MiB of text, tens of KB compressed."""
    line = b'{"k":"lost","t":1001.0,"n":1,"x":[' + b"{}," * objects + b"{}]}\n"
    with gzip.open(path, "wb", 9) as f:
        f.write(json.dumps({"format": "cttrace-capture", "version": 1, **HDR, "state": STATE}).encode() + b"\n")
        for _ in range(records):
            f.write(line)
        f.write(b'{"k":"end","t":1002.0}\n')
    return path


def test_lost_records_full_of_objects_stay_small(tmp_path):
    p = _lost_bomb(tmp_path / "bomb.ctcap")
    assert p.stat().st_size < 200_000
    rc, err, peak = _child(["report", str(p), "--json"], limit_mib=1024)
    assert "Traceback" not in err and "MemoryError" not in err
    assert rc == 0, err                       # read: the bad records are skipped and said
    assert "3 corrupted records skipped" in err
    if peak is not None:
        assert peak < 400                     # base: 924 MB for a 32 KB file of this kind


def test_small_records_keep_only_their_typed_fields(tmp_path):
    p = _capture(tmp_path / "c", extra=[{"k": "lost", "t": 1001.0, "n": 2, "x": [{}] * 100},
                                         {"k": "drop", "t": 1001.0, "src": "10.0.0.2", "reason": "x",
                                          "junk": "y" * 1000},
                                         {"k": "future", "t": 1001.0}])
    cap = read_capture(str(p))
    assert cap.bad_records == 1                              # 102 objects in a lost record
    (d,) = cap.of("drop")
    assert d == {"k": "drop", "t": 1001.0, "src": "10.0.0.2", "reason": "x"}
    assert not cap.of("future")


def test_only_the_last_end_state_is_kept(tmp_path):
    big = dict(STATE, by_src={f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}": 1 for i in range(50_000)})
    p = _capture(tmp_path / "c", extra=[{"k": "end", "t": 1001.0, "state": big}] * 5)
    cap = read_capture(str(p))
    ends = cap.of("end")
    assert len(ends) == 6 and sum("state" in e for e in ends) == 1
    assert cap.host_state().by_src == {"10.0.0.1": 150}


def _deep(n):
    v = 1
    for _ in range(n):
        v = [v]
    return v


HOSTILE_STATES = {
    "infinity_ages": {"ages": {"remaining": {"udp/UNREPLIED": {"Infinity": 5}}, "total": 5}},
    "float_ages_key": {"ages": {"remaining": {"udp/UNREPLIED": {"1e308": 5}}, "total": 5}},
    "kinds_ints": {"ages": {"remaining": {"udp": {"5": 1}}, "candidates": [
        {"sysctl": "udp_timeout", "kinds": [1], "current": 30, "proposed": 10, "freed": 150, "of": 200}],
        "total": 200}},
    "by_app_ints": {"ages": {"remaining": {"udp": {"5": 1}}, "total": 200, "candidates": [
        {"sysctl": "udp_timeout", "kinds": ["udp"], "current": 30, "proposed": 10, "freed": 150,
         "of": 200, "by_app": [1]}]}},
    "schedule_strings": {"ages": {"remaining": {"udp": {"5": 1}}, "schedule": {"udp": {"10s": "x"}},
                                  "total": 1}},
    "deep_schedule": {"ages": {"remaining": {"udp": {"5": 1}}, "schedule": {"udp": _deep(900)}}},
    "deep_by_src": {"by_src": {"10.0.0.1": _deep(900)}},
    "float_max": {"max": 1e300, "count": 1e300},
    "bool_count": {"count": True},
    "huge_int": {"max": 2**70},
    "nat_wrong": {"nat": {"snat": [{"proto": "udp", "snat": 1}], "dnat": 5}},
    "sysctls_nan": {"sysctls": {"udp_timeout": float("nan")}},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_STATES))
def test_doctor_capture_with_hostile_state(tmp_path, name):
    """Item 4: base gave tracebacks (Infinity, kinds: [1], by_app: [1], string
    schedule values) or a RecursionError in --json (900 deep)."""
    st = dict(STATE, **HOSTILE_STATES[name])
    text = json.dumps(st)                     # NaN/Infinity as Python's json writes them
    p = tmp_path / "c"
    _capture(p, json.loads(text))
    for args in (["doctor", "--capture", str(p)], ["doctor", "--capture", str(p), "--json"],
                 ["report", str(p), "--json"]):
        r = _cli(*args)
        assert r.exit_code == 0, (args, r.output)
    got = state_fields(json.loads(text))
    bad = set(HOSTILE_STATES[name])
    assert set(got) == set(STATE) - bad       # the bad field is left out, the rest stays


def test_state_schema_is_the_dataclass():
    """Every recorded field of HostState has a checkable annotation, and a
    state round-trips through asdict/JSON unchanged: a new field needs no
    list anywhere else."""
    for name, tp in schema.recorded_fields(HostState).items():
        schema.check(dataclasses.asdict(HostState())[name] or None, tp | None)
    h = HostState(count=5, max=10, sysctls={"udp_timeout": 30}, rates={"drop": 0.5}, kernel="6.1",
                  ages={"remaining": {"udp": {"5": 1}}, "total": 1, "life": None}, assumed=["udp_timeout"],
                  malformed_samples=[[1, "x"]], nat={"entries": 3, "snat": []})
    raw = json.loads(json.dumps(dataclasses.asdict(h)))
    assert HostState(**state_fields(raw)) == h


def test_deep_nesting_and_unreadable_header_are_one_line(tmp_path):
    p = tmp_path / "c"
    with gzip.open(p, "wb") as f:
        f.write(b'{"format":"cttrace-capture","version":1,"state":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    r = _cli("report", str(p))
    assert r.exit_code == 1 and r.output.count("\n") == 1


# --- item 4: exports and settings -----------------------------------------------------------

LINE = ("ipv4     2 udp      17 {t} src=10.0.0.1 dst=10.0.0.2 sport=1 dport=53 [UNREPLIED] "
        "src=10.0.0.2 dst=10.0.0.1 sport=53 dport=1 mark=0 zone=0 use=2\n")


@pytest.mark.parametrize("t", ["9" * 5000, "1" + "0" * 29, "9999999999"])
def test_export_with_impossible_timeouts(tmp_path, t):
    p = tmp_path / "e.txt"
    p.write_text(LINE.format(t=t) + LINE.format(t=20) * 3)
    r = _cli("doctor", "--file", str(p), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rem = out["state"]["ages"]["remaining"]
    assert rem == {"udp/UNREPLIED": {"20": 3}}                    # never years left
    gz = tmp_path / "e.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert _cli("snapshot", "--file", str(gz)).exit_code == 0


@pytest.mark.parametrize("value", ["²", "9" * 5000, "99999999999", "21474837", "-1", "1e3", "٣"])
def test_sysctl_values_out_of_any_kernels_range(tmp_path, value):
    p = tmp_path / "e.txt"
    p.write_text(LINE.format(t=20))
    r = _cli("doctor", "--file", str(p), "--sysctl", f"udp_timeout={value}")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "nf_conntrack_udp_timeout must be a whole number of seconds up to 21,474,836" in r.output
    if value == "21474837":                   # a fine nf_conntrack_max
        return
    s = tmp_path / "s.txt"
    s.write_text(f"net.netfilter.nf_conntrack_max = {value}\n")
    r = _cli("doctor", "--file", str(p), "--sysctls", str(s))
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "up to 2,147,483,647" in r.output


def test_sysctl_at_the_kernels_bounds_is_taken(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text(LINE.format(t=20))
    r = _cli("doctor", "--file", str(p), "--json", "--sysctl", "udp_timeout=21474836",
             "--sysctl", "nf_conntrack_max=2147483647")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["state"]["sysctls"]["udp_timeout"] == 21474836


def test_record_count_is_bounded(tmp_path, monkeypatch):
    from tracer.formats import capture as capmod
    monkeypatch.setattr(capmod, "MAX_RECORDS", 5)
    p = _capture(tmp_path / "c", extra=[{"k": "lost", "t": 1001.0, "n": 1}] * 10)
    r = _cli("report", str(p))
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "more than 5 records: more than cttrace reads in one go" in r.output
