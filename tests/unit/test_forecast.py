"""tracer.core.forecast: schedule, idle buckets, candidates, time to full (pure)."""


import pytest

from tracer.core import forecast as F
from tracer.core.conntrack import F_ASSURED, F_UNREPLIED

SYS = {"udp_timeout": 120, "udp_timeout_stream": 180, "tcp_timeout_established": 432000,
       "tcp_timeout_time_wait": 120}
IP = bytes([198, 18, 0, 2])


def row(proto, state, flags, timeout, dport=53, src=IP):
    return (proto, state, src, bytes([198, 18, 0, 1]), dport, flags, (0, 0), 40000, None, timeout)


def test_kinds_and_sysctls():
    assert F.kind(17, None, F_UNREPLIED) == "udp/UNREPLIED"
    assert F.kind(17, None, F_ASSURED) == "udp/STREAM"
    assert F.kind(17, None, 0) == "udp/REPLIED"
    assert F.kind(6, 3, F_ASSURED) == "tcp/ESTABLISHED"
    assert F.kind(1, None, 0) == "icmp"
    assert F.sysctl_of("udp/STREAM") == "udp_timeout_stream"
    assert F.sysctl_of("udp/REPLIED") == "udp_timeout"
    assert F.sysctl_of("tcp/TIME_WAIT") == "tcp_timeout_time_wait"
    assert F.sysctl_of("ipip") == "generic_timeout"
    # GRE has timeouts of its own (nf_conntrack_proto_gre.c), not generic_timeout
    assert F.kind(47, None, F_UNREPLIED) == "gre/UNREPLIED" and F.kind(47, None, F_ASSURED) == "gre/STREAM"
    assert F.sysctl_of("gre/UNREPLIED") == "gre_timeout"
    assert F.sysctl_of("gre/STREAM") == "gre_timeout_stream"


def test_schedule_idle_and_candidates_from_rows():
    a = F.Ages()
    # 30 UDP unreplied flows idle 100 s (20 left), 50 idle 5 s (115 left),
    # 4 established idle 2 days, 1 established idle 1 s
    a.add_rows([row(17, None, F_UNREPLIED, 20, dport=4000 + i) for i in range(30)])
    a.add_rows([row(17, None, F_UNREPLIED, 115, dport=5000) for _ in range(50)])
    a.add_rows([row(6, 3, F_ASSURED, 432000 - 172800, dport=5432) for _ in range(4)])
    a.add_rows([row(6, 3, F_ASSURED, 431999, dport=443)])
    s = a.summary(SYS, addr=lambda raw: ".".join(map(str, raw)))
    assert s["total"] == 85 and s["assured"] == 5
    assert s["schedule"]["udp/UNREPLIED"] == {"10s": 0, "1m": 30, "10m": 80, "total": 80}
    assert s["schedule"]["tcp/ESTABLISHED"]["10m"] == 0
    assert s["idle"]["udp/UNREPLIED"]["buckets"]["0s-10s"] == 50
    assert s["idle"]["udp/UNREPLIED"]["buckets"]["1m-5m"] == 30
    assert s["idle"]["tcp/ESTABLISHED"]["buckets"][">=1d"] == 4
    assert s["idle"]["tcp/ESTABLISHED"]["buckets"]["0s-10s"] == 1
    c = {(x["sysctl"], x["proposed"]): x for x in s["candidates"]}
    assert c[("udp_timeout", 10)]["freed"] == 30 and c[("udp_timeout", 10)]["of"] == 80
    assert c[("tcp_timeout_established", 86400)]["freed"] == 4
    assert c[("tcp_timeout_established", 86400)]["by_app"] == [
        {"src": "198.18.0.2", "dport": "tcp/5432", "entries": 4}]
    assert ("tcp_timeout_time_wait", 30) not in c        # no TIME_WAIT entry: nothing to offer
    assert s["new_kind"] == "udp/UNREPLIED" and s["life"] == 120


def test_candidates_only_below_current():
    s = F.summarize({"udp/UNREPLIED": {5: 3}}, {"udp_timeout": 10})
    assert [c["proposed"] for c in s["candidates"]] == []


def test_apps_capped(monkeypatch):
    monkeypatch.setattr(F, "APPS_CAP", 3)
    a = F.Ages()
    a.add_rows([row(17, None, F_UNREPLIED, 20, dport=i) for i in range(5)])
    s = a.summary(SYS)
    assert all("by_app" not in c for c in s["candidates"])
    assert s["total"] == 5


def test_time_to_full_straight_fill():
    # empty table, 100/s, entries live 120 s, limit 5000: full at 50 s
    t, steady = F.time_to_full([], 5000, 100.0, 120)
    assert t == pytest.approx(50.0) and steady == 12000


def test_not_filling_when_steady_below_limit():
    t, steady = F.time_to_full([], 20000, 100.0, 120)
    assert t is None and steady == 12000


def test_existing_entries_expire_on_schedule():
    # 4000 entries expire at 10 s; 100/s new; limit 4500: without expiry
    # full at 5 s (4000 + 500); with 4000 leaving at 10 s it is full at 5 s still
    t, _ = F.time_to_full([(10, 4000)], 4500, 100.0, 120)
    assert t == pytest.approx(5.0)
    # limit 5100: would be full at 11 s in a straight line, but at 10 s 4000
    # leave: 100 t alone reaches 5100 only at 51 s
    t, _ = F.time_to_full([(10, 4000)], 5100, 100.0, 120)
    assert t == pytest.approx(51.0)
    # ... and never when new entries live 30 s
    assert F.time_to_full([(10, 4000)], 5100, 100.0, 30)[0] is None


def test_the_level_keeps_the_entries_that_outlive_the_new_ones():
    # 50,000 ESTABLISHED entries with days left, new DNS flows at 100/s
    # living 30 s: the table holds 53,000 for days, not 3,000
    t, steady = F.time_to_full([(20, 1000), (400000, 50000)], 100000, 100.0, 30)
    assert t is None and steady == 53000
    assert F.text(F.forecast([(400000, 50000)], 100000, (100.0, 100.0, 100.0), 30)) == \
        "not filling (levels at ~53,000)"


def test_full_now_and_no_inserts():
    assert F.time_to_full([(5, 10)], 10, 0.0, 60)[0] == 0.0
    assert F.time_to_full([(5, 5)], 10, 0.0, 60)[0] is None
    t, _ = F.time_to_full([], 100, 1.0, None)
    assert t == pytest.approx(100.0)


def test_band_and_forecast_text():
    lo, m, hi = F.rate_band([90.0, 100.0, 110.0])
    assert (lo, m, hi) == (90.0, 100.0, 110.0)
    lo, m, hi = F.rate_band(None, count=400, seconds=4.0)
    assert m == 100.0 and lo == pytest.approx(90.0) and hi == pytest.approx(110.0)
    f = F.forecast([], 5000, (90.0, 100.0, 110.0), 120)
    assert f["filling"] and f["seconds"] == pytest.approx(50.0)
    assert f["low"] == pytest.approx(5000 / 110) and f["high"] == pytest.approx(5000 / 90)
    assert F.text(f) == "full in ~50s (45s-56s)"
    g = F.forecast([], 20000, (90.0, 100.0, 110.0), 120)
    assert not g["filling"] and F.text(g) == "not filling (levels at ~12,000)"
    assert F.forecast([], None, (1, 1, 1), 1) == {"filling": None, "reason": "no limit known"}
    assert F.text({}) == ""


def test_flat_and_human():
    assert F.flat({"a": {"10": 2}, "b": {10: 1, "3": 4}}) == [(3.0, 4), (10.0, 3)]
    assert F.human(30) == "30s" and F.human(600) == "10m" and F.human(None) == "never"
    assert F.human(3 * 86400) == "3.0d"


def test_entry_size():
    assert F.entry_size(248, None)[0] == 256
    assert F.entry_size(248, 320)[0] == 320
    assert F.entry_size(None)[0] is None


def _state(**kw):
    from tracer.core.hoststate import HostState
    rem = {"udp/UNREPLIED": {110: 900, 20: 100}}
    ages = F.summarize(rem, {"udp_timeout": 120}, assured=0)
    base = dict(count=1000, max=2000, window=2.0, deltas={"insert": 200}, ages=ages, total=1000,
                sysctls={"udp_timeout": 120}, entry_bytes=256, entry_bytes_how="slab")
    base.update(kw)
    return HostState(**base)


def test_doctor_time_to_full_and_candidates():
    from tracer.core.doctor import diagnose, table_forecast
    h = _state()
    f = table_forecast(h, 2000)
    # 1000 now (100 expire at 18 s after the window), +100/s living 120 s:
    # 1000 + 100 s = 2000 at 10 s
    assert f["filling"] and f["seconds"] == pytest.approx(10.0)
    found = {x.id: x for x in diagnose(h)}
    assert found["time_to_full"].severity == "critical"
    assert "full in ~10s" in found["time_to_full"].message
    assert "costs 0.0 MiB" not in found["time_to_full"].evidence
    assert "nf_conntrack_max=262,144 costs" in found["time_to_full"].evidence
    c = found["shorter_udp_timeout"]
    assert "would free 1,000 entries now" in c.message     # idle 10 and 100 s, both >= 10
    assert "sysctl -w net.netfilter.nf_conntrack_udp_timeout=10" in c.fix


def test_doctor_not_filling_and_early_drop():
    from tracer.core.doctor import diagnose
    h = _state(max=100000)
    found = {x.id: x for x in diagnose(h)}
    assert "time_to_full" not in found and found["not_filling"].message == (
        "the conntrack table is not filling: at this rate it levels at ~12,000 of 100,000")
    ages = F.summarize({"tcp/ESTABLISHED": {400000: 1900}}, {"tcp_timeout_established": 432000},
                       assured=1900)
    full = _state(count=1950, ages=ages, deltas={})
    found = {x.id: x for x in diagnose(full)}
    assert "95%" not in found["early_drop_blocked"].message
    assert "100% of entries are ASSURED" in found["early_drop_blocked"].message


def test_doctor_without_kernel_insert_counter_uses_growth():
    from tracer.core.doctor import inserts
    # count grew by 150 over the dump's 1000; 100 entries had <= 2 s left
    h = _state(count=1150, deltas={"insert": 0},
               ages=F.summarize({"udp/UNREPLIED": {110: 900, 1: 100}}, {"udp_timeout": 120}))
    assert inserts(h) == 250


def test_capture_state_keeps_a_clean_summary():
    from tracer.formats.capture import state_fields as _clean_state
    s = F.summarize({"udp/UNREPLIED": {110: 900, 20: 100}}, {"udp_timeout": 120})
    s = __import__("json").loads(__import__("json").dumps(s))       # as a capture holds it
    got = _clean_state({"ages": s, "entry_bytes": 256, "entry_bytes_how": "slab"})
    assert got["ages"]["remaining"] == s["remaining"] and got["entry_bytes"] == 256
    assert got["ages"]["candidates"] == s["candidates"]
    assert "ages" not in _clean_state({"ages": {"remaining": {"udp": {"x": 1}}}})
    assert "ages" not in _clean_state({"ages": [1, 2]})


def test_from_net():
    f = F.from_net(1000, 2000, [90.0, 100.0, 110.0])
    assert f["filling"] and f["seconds"] == 10.0 and f["high"] == pytest.approx(1000 / 90)
    assert F.text(f) == "full in ~10s (9s-11s)"
    g = F.from_net(1000, 2000, [-5.0, 0.0, 5.0])
    assert g["filling"] is False and g["low"] == 200.0
    assert F.text(g).startswith("not filling (levels at ~1,000)")
    assert F.from_net(1000, 2000, [])["filling"] is None


def test_top_header_shows_the_forecast():
    import copy

    from rich.console import Console

    from tests.unit.test_views_top import FRAME
    from tracer.views.top import render
    f = copy.deepcopy(FRAME)
    f["forecast"] = F.from_net(1234, 2000, [18.0, 20.0, 22.0])
    c = Console(record=True, width=100)
    c.print(render(f, full_screen=False))
    assert "full in ~38s (35s-43s)" in c.export_text()
    f["forecast"] = F.from_net(1234, 2000, [-1.0, 0.0, 1.0])
    c = Console(record=True, width=100)
    c.print(render(f, full_screen=False))
    assert "not filling (levels at ~1,234)" in c.export_text()


def test_new_entries_live_the_most_held_kind_when_none_is_young():
    """No entry touched in the last 10 s: new entries live the timeout of the
    kind most entries hold (top and serve choose so too), not forever."""
    s = F.summarize({"udp/UNREPLIED": {100: 900}, "tcp/TIME_WAIT": {50: 100}},
                    {"udp_timeout": 120, "tcp_timeout_time_wait": 120})
    assert s["new_kind"] == "udp/UNREPLIED" and s["life"] == 120
    young = F.summarize({"udp/UNREPLIED": {100: 900}, "tcp/TIME_WAIT": {118: 5}},
                        {"udp_timeout": 120, "tcp_timeout_time_wait": 120})
    assert young["new_kind"] == "tcp/TIME_WAIT"
