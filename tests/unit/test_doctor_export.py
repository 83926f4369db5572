"""`doctor --file`: the timeout column of every export format, and the
findings an export gives (hand-made tables whose timeouts, states and flags
the test chooses, so every figure has a known answer)."""

import gzip
import json
import random

import pytest
from tests.clirunner import runner

from tracer.core import doctor as D
from tracer.formats import export as tablefile
from tracer.cli import main as cli
from tracer.kernel.host import DEFAULT_TIMEOUTS, SettingsError, parse_settings, read_export
from tracer.core.filters import Filter
from tracer.core.snapshot import Summary


def udp(fmt, t, src, sport, dst, dport, unreplied=True, assured=False):
    body = (f"src={src} dst={dst} sport={sport} dport={dport} " + ("[UNREPLIED] " if unreplied else "")
            + f"src={dst} dst={src} sport={dport} dport={sport} " + ("[ASSURED] " if assured else ""))
    return _wrap(fmt, "udp      17", t, "", body)


def tcp(fmt, t, state, src, sport, dst, dport, assured=True):
    body = (f"src={src} dst={dst} sport={sport} dport={dport} src={dst} dst={src} sport={dport} "
            f"dport={sport} " + ("[ASSURED] " if assured else ""))
    return _wrap(fmt, "tcp      6", t, state + " ", body)


def _wrap(fmt, proto, t, state, body):
    tt = f"{t} " if t is not None else ""
    if fmt == "proc":           # /proc/net/nf_conntrack
        return f"ipv4     2 {proto} {tt}{state}{body}mark=0 zone=0 use=2"
    if fmt == "extended":       # conntrack -L -o extended,id
        return f"ipv4     2 {proto} {tt}{state}{body}mark=0 use=1 id=4242"
    return f"{proto} {tt}{state}{body}mark=0 use=1"       # conntrack -L


FORMATS = ("proc", "plain", "extended")


def known_table(fmt):
    """(lines, truth): 300 UDP flows idle 25 s (5 s left of 30) from
    198.18.0.9 to udp/5000, 100 idle 2 s from 198.18.0.10 to udp/6000,
    400 ESTABLISHED assured, idle 1-2 h (of 432000), 200 TIME_WAIT idle
    100 s (20 s left of 120), 3 offloaded ESTABLISHED (no timeout)."""
    lines = []
    lines += [udp(fmt, 5, "198.18.0.9", 10000 + i, "198.18.1.1", 5000) for i in range(300)]
    lines += [udp(fmt, 28, "198.18.0.10", 10000 + i, "198.18.1.1", 6000) for i in range(100)]
    lines += [tcp(fmt, 432000 - 3600 - i, "ESTABLISHED", "198.18.0.11", 20000 + i, "198.18.1.2", 443)
              for i in range(400)]
    lines += [tcp(fmt, 20, "TIME_WAIT", "198.18.0.12", 30000 + i, "198.18.1.2", 80) for i in range(200)]
    lines += [tcp(fmt, None, "ESTABLISHED", "198.18.0.13", 40000 + i, "198.18.1.2", 443).replace(
        "[ASSURED]", "[OFFLOAD] [ASSURED]") for i in range(3)]
    random.Random(7).shuffle(lines)
    return lines


@pytest.mark.parametrize("fmt", FORMATS)
def test_timeouts_of_each_format_fast_and_tolerant(tmp_path, fmt):
    lines = known_table(fmt)
    f = tmp_path / "t.txt"
    f.write_text("\n".join(lines) + "\n")
    res, dec = tablefile.scan(str(f), Filter(), 1, timed=True)
    a = tablefile.ages_summary(res.ages, dec, DEFAULT_TIMEOUTS)
    assert res.malformed == 0 and res.entries == 1003
    assert a["remaining"]["udp/UNREPLIED"] == {"5": 300, "28": 100}
    assert a["remaining"]["tcp/TIME_WAIT"] == {"20": 200}
    assert sum(a["remaining"]["tcp/ESTABLISHED"].values()) == 400      # the offloaded 3 have none
    assert a["total"] == 1000 and a["assured"] == 603
    # the same from the tolerant parser (tabs for spaces send each line there)
    g = tmp_path / "tabs.txt"
    g.write_text("\n".join(x.replace(" ", "\t") for x in lines) + "\n")
    res2, dec2 = tablefile.scan(str(g), Filter(), 1, timed=True)
    assert res2.malformed == 0
    assert tablefile.ages_summary(res2.ages, dec2, DEFAULT_TIMEOUTS) == a
    # and the breakdowns equal the untimed scan's (snapshot's fast path)
    res3, dec3 = tablefile.scan(str(f), Filter(), 1)
    assert Summary.from_columns(res3.cols, dec3).to_dict() == Summary.from_columns(res.cols, dec).to_dict()


def test_parse_timed_takes_the_timeout_column():
    line = tcp("proc", 117, "TIME_WAIT", "198.18.0.1", 1, "198.18.0.2", 80).encode()
    row = tablefile.parse_timed(line)
    assert row[1] == b"117" and row[2] == b"TIME_WAIT"
    assert tablefile.parse_line(line) == (row[0],) + row[2:]
    m = tablefile.FAST_T.fullmatch(b"\n" + line)
    assert m.groups(b"")[:6] == row[:6] and m.group(2) == b"117"
    off = tcp("plain", None, "ESTABLISHED", "198.18.0.1", 1, "198.18.0.2", 80).encode()
    assert tablefile.parse_timed(off)[1] == b"" and tablefile.FAST_T.fullmatch(b"\n" + off).group(2) is None


def test_parallel_timed_scan_equals_one_process(tmp_path, monkeypatch):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(known_table("proc") * 20) + "\n")
    monkeypatch.setattr(tablefile, "PARALLEL_MIN", 1)
    monkeypatch.setattr(tablefile, "BLOCK", 1 << 16)
    one, dec = tablefile.scan(str(f), Filter(), 1, timed=True)
    two, dec2 = tablefile.scan(str(f), Filter(), 2, timed=True)
    assert one.entries == two.entries == 20060
    assert tablefile.ages_summary(one.ages, dec, DEFAULT_TIMEOUTS) == \
        tablefile.ages_summary(two.ages, dec2, DEFAULT_TIMEOUTS)


def test_timed_scan_takes_no_filter():
    with pytest.raises(ValueError):
        tablefile.Scanner(Filter(protos=["udp"]), timed=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_findings_equal_the_known_content(tmp_path, fmt):
    f = tmp_path / "t.txt.gz"
    f.write_bytes(gzip.compress(("\n".join(known_table(fmt)) + "\n").encode()))
    h = read_export(str(f), {"max": 1100})
    assert h.count == 1003 and h.total == 1003 and h.max == 1100 and h.window == 0
    idle = h.ages["idle"]
    assert idle["udp/UNREPLIED"]["buckets"]["10s-1m"] == 300
    assert idle["udp/UNREPLIED"]["buckets"]["0s-10s"] == 100
    assert idle["tcp/TIME_WAIT"]["buckets"]["1m-5m"] == 200
    assert idle["tcp/ESTABLISHED"]["buckets"]["1h-1d"] == 400
    found = {x.id: x for x in D.diagnose(h)}
    # no rates: no time to full, and the doctor says so
    assert "time_to_full" not in found and "not_filling" not in found
    nr = found["export_no_rates"]
    assert "no rates" in nr.message and "1,000 entries with a timeout" in nr.evidence
    assert "3 more without one: offloaded" in nr.evidence
    # expiring unless refreshed: the 300 UDP (5 s) in 10 s; + 100 UDP (28 s) + 200 TIME_WAIT (20 s) in 1 min
    assert "300 in 10 s, 600 in 1 min, 600 in 10 min" in nr.evidence
    # the memory of a higher max, at this machine's bytes per entry (262144 - 1100 more entries)
    if h.entry_bytes:
        mib = (262144 - 1100) * h.entry_bytes / 2**20
        assert f"nf_conntrack_max=262,144 (now 1,100) costs {mib:,.1f} MiB more" in nr.evidence
    # a 10 s UDP timeout frees the 300 idle ones, from their source and port
    u = found["shorter_udp_timeout"]
    assert "would free 300 entries now" in u.message
    assert "udp/5000: 300 entries from 1 source" in u.evidence
    assert u.cuts[0]["top_sources"] == [{"src": "198.18.0.9", "entries": 300}] and len(u.cuts) == 1 and "198.18.0.10" not in u.evidence
    assert "assumed: the kernel's default" in u.evidence
    # 30 s TIME_WAIT: the 200 idle 100 s
    assert "would free 200 entries now" in found["shorter_tcp_timeout_time_wait"].message
    # a day of ESTABLISHED frees none of the 400 idle 1-2 h; 3600 frees all of them
    e = found["shorter_tcp_timeout_established"]
    assert "=3,600 (now 432,000) would free 400 entries" in e.message
    assert "tcp/443: 400 entries from 1 source" in e.evidence
    assert e.cuts[0]["top_sources"] == [{"src": "198.18.0.11", "entries": 400}]
    # 91% full: early drop can evict only the 400 not ASSURED of 1,003
    assert "early_drop_blocked" not in found        # 60% assured
    assert "table_full" in found                    # 1,003 of 1,100
    # every ESTABLISHED entry idle an hour or more of an assumed 5 days: said to be unsure
    assert found["export_timeouts"].evidence.startswith(
        "tcp/ESTABLISHED: at most 428,400 s left of the assumed 432,000")


def test_early_drop_share_and_wrong_timeouts(tmp_path):
    lines = [tcp("plain", 432000 - i, "ESTABLISHED", "198.18.0.1", 1000 + i, "198.18.1.1", 443)
             for i in range(190)]
    lines += [udp("plain", 25, "198.18.0.2", 1000 + i, "198.18.1.1", 53) for i in range(10)]
    f = tmp_path / "t.txt"
    f.write_text("\n".join(lines) + "\n")
    found = {x.id: x for x in D.diagnose(read_export(str(f)))}
    ed = found["early_drop_blocked"]
    assert ed.severity == D.INFO and "95% of entries are ASSURED" in ed.message
    assert "190 of 200 entries are ASSURED" in ed.evidence
    assert "export_timeouts" not in found
    # the host's udp_timeout was 20: remaining 25 cannot be
    found = {x.id: x for x in D.diagnose(read_export(str(f), {"udp_timeout": 20, "max": 210}))}
    assert "udp/UNREPLIED: up to 25 s left, more than nf_conntrack_udp_timeout=20" in \
        found["export_timeouts"].evidence
    assert found["early_drop_blocked"].severity == D.WARNING      # 200 of 210: full, 95% assured
    # kube-proxy's day: ESTABLISHED with at most 86,400 s left is not the 5-day default
    lines = [tcp("plain", 86400 - i, "ESTABLISHED", "198.18.0.1", 1000 + i, "198.18.1.1", 443)
             for i in range(150)]
    f.write_text("\n".join(lines) + "\n")
    found = {x.id: x for x in D.diagnose(read_export(str(f)))}
    assert "at most 86,400 s left of the assumed 432,000" in found["export_timeouts"].evidence
    assert "assumed: the kernel's default" in found["established_timeout"].evidence
    found = {x.id: x for x in D.diagnose(read_export(str(f), {"tcp_timeout_established": 86400}))}
    assert "export_timeouts" not in found and "established_timeout" not in found


def test_parse_settings():
    text = ("net.netfilter.nf_conntrack_udp_timeout = 45\n"
            "net.netfilter.nf_conntrack_max = 131072\n"
            "net.netfilter.nf_conntrack_buckets = 32768\n"
            "net.netfilter.nf_conntrack_log_invalid = 0\n"
            "net.nf_conntrack_max = 131072\n"
            "tcp_timeout_established=86400\n"
            "/proc/sys/net/netfilter/nf_conntrack_icmp_timeout 12\n")
    assert parse_settings(text, "x") == {"udp_timeout": 45, "max": 131072, "buckets": 32768,
                                         "tcp_timeout_established": 86400, "icmp_timeout": 12}
    with pytest.raises(SettingsError, match="line 2: nf_conntrack_udp_timeout must be a whole number"):
        parse_settings("# c\nudp_timeout = 1.5\n", "x")


def _run(args, input=None):
    r = runner().invoke(cli, args, input=input)
    return r.exit_code, r.output


def test_cli_file_json_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(known_table("extended")) + "\n")
    s = tmp_path / "s.txt"
    s.write_text("net.netfilter.nf_conntrack_udp_timeout = 30\nnet.netfilter.nf_conntrack_max = 4000\n")
    code, out = _run(["doctor", "--file", str(f), "--sysctls", str(s), "--json"])
    assert code == 0, out
    j = json.loads(out)
    assert j["state"]["export"] == str(f) and j["state"]["max"] == 4000
    assert "udp_timeout" not in j["state"]["assumed"]
    assert j["state"]["ages"]["idle"]["udp/UNREPLIED"]["buckets"]["10s-1m"] == 300
    assert "export_no_rates" in {x["id"] for x in j["findings"]}
    code, out = _run(["doctor", "-f", "-"], input="\n".join(known_table("plain")) + "\n")
    assert code == 0 and "cttrace doctor: export standard input, table 1,003 entries" in out
    cases = [
        (["doctor", "--file", str(tmp_path / "none")], "no such file"),
        (["doctor", "--file", str(tmp_path)], "is a directory"),
        (["doctor", "--file", str(f), "--netns", "x"], "excludes --capture and --netns"),
        (["doctor", "--sysctl", "udp_timeout=3"], "go with --file"),
        (["doctor", "--file", str(f), "--window", "5"], "excludes --file and --capture"),
        (["doctor", "--capture", str(f), "--window", "5"], "excludes --file and --capture"),
        (["doctor", "--file", str(f), "--sysctl", "udp_timeout"], "expected NAME=VALUE"),
        (["doctor", "--file", str(f), "--sysctl", "udp_timeout=x"], "must be a whole number"),
        (["doctor", "--file", str(f), "--sysctl", "foo=3"], "not a conntrack timeout"),
        (["doctor", "--file", str(f), "--sysctls", str(tmp_path / "none")], "no such file"),
        (["doctor", "--file", str(f), "--sysctls", str(f)], "no conntrack setting in it"),
    ]
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(f.read_bytes())[:300])
    cases.append((["doctor", "--file", str(bad)], "truncated compressed data"))
    text = tmp_path / "text.txt"
    text.write_text("hello\nworld\n")
    cases.append((["doctor", "--file", str(text)], "no conntrack entries found in 2 lines"))
    binary = tmp_path / "b.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    cases.append((["doctor", "--file", str(binary)], "is a binary file"))
    empty = tmp_path / "empty"
    empty.write_text("")
    cases.append((["doctor", "--file", str(empty)], "is empty"))
    for args, msg in cases:
        code, out = _run(args)
        assert code in (1, 2), (args, out)
        assert msg in out and "Traceback" not in out, (args, out)
        assert len(out.strip().splitlines()) == 1, (args, out)


def test_cli_text_render_and_malformed_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(known_table("proc")) + "\nnot a line\n")
    code, out = _run(["doctor", "--file", str(f)])
    assert code == 0, out
    assert "cttrace doctor: export" in out and "export_no_rates" in out
    assert "1 malformed line(s) skipped; first: line 1004: 'not a line'" in out
    assert "shorter_udp_timeout" in out


def test_tunnels_in_an_export(tmp_path):
    """VXLAN on 4789 and on Linux's default 8472 (flannel, Cilium), Geneve:
    each a NOTRACK candidate with the entries it removes."""
    lines = [udp("proc", 100, "198.18.0.1", 1000 + i, "198.18.0.2", 4789, unreplied=False, assured=True)
             for i in range(50)]
    lines += [udp("proc", 100, "198.18.0.1", 2000 + i, "198.18.0.3", 8472, unreplied=False, assured=True)
              for i in range(70)]
    lines += [udp("proc", 100, "198.18.0.1", 3000 + i, "198.18.0.4", 6081, unreplied=False, assured=True)
              for i in range(30)]
    f = tmp_path / "t.txt"
    f.write_text("\n".join(lines) + "\n")
    found = {x.id: x for x in D.diagnose(read_export(str(f), {"max": 1000}))}
    assert "50 entries that need no state" in found["tracked_vxlan"].message
    v = found["tracked_vxlan_8472"]
    assert "udp/8472" in v.message and "70 entries that need no state" in v.message
    assert "an export holds only tracked entries; without them 80 of 150 entries stay" in v.evidence
    assert "--dport 8472 -j CT --notrack" in v.fix
    assert "30 entries" in found["tracked_geneve"].message


def test_gre_entries_are_on_their_own_timeouts(tmp_path):
    # 200 replied GRE tunnels just refreshed (179 s left of gre_timeout_stream
    # 180), 5 unreplied (29 s left of gre_timeout 30): none is idle, and a
    # shorter generic_timeout would free none of them
    gre = ("gre      47 {t} src=198.18.0.{i} dst=198.18.1.1 srckey=0x0 dstkey=0x0 {u}"
           "src=198.18.1.1 dst=198.18.0.{i} srckey=0x0 dstkey=0x0 {a}mark=0 use=1")
    lines = [gre.format(t=179, i=i, u="", a="[ASSURED] ") for i in range(200)]
    lines += [gre.format(t=29, i=i, u="[UNREPLIED] ", a="") for i in range(5)]
    p = tmp_path / "gre.txt"
    p.write_text("\n".join(lines) + "\n")
    a = read_export(str(p)).ages
    assert a["idle"]["gre/STREAM"]["sysctl"] == "gre_timeout_stream"
    assert a["idle"]["gre/STREAM"]["buckets"]["0s-10s"] == 200
    assert a["idle"]["gre/UNREPLIED"]["buckets"]["0s-10s"] == 5
    assert not [c for c in a["candidates"] if c["freed"]]
