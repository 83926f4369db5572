"""Names from the system on their way to the terminal: the escape helper,
the doctor's panels and the drop lines, through rich's recording console."""

import io
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from tracer.core.doctor import Finding, HostState, diagnose
from tracer.views import doctor, drops
from tracer.views.escape import safe, text

HOSTILE = "[/x][bold red]\x1b[2J\x1b]0;t\x07\x9b"


def text_of(renderable, width=80) -> str:
    c = Console(record=True, width=width, color_system=None, file=io.StringIO())
    c.print(renderable)
    return c.export_text()


def test_safe():
    assert safe(None) == ""
    assert safe(4026531840) == "4026531840"
    assert safe("web-1") == "web-1"
    assert safe(HOSTILE) == "[/x][bold red]\\x1b[2J\\x1b]0;t\\x07\\x9b"
    assert safe("a\nb\tc") == "a\\x0ab\\x09c"
    assert safe("a\nb\tc", newlines=True) == "a\nb\\x09c"
    assert text("[/x]").plain == "[/x]" and text("[/x]").spans == []


def test_rich_would_crash_on_the_raw_name():
    """What the escaping is for: the same name as markup is an error."""
    from rich.errors import MarkupError
    with pytest.raises(MarkupError):
        text_of("[/x]")
    assert text_of(text("[/x]")) == "[/x]\n"


def test_doctor_panels_with_hostile_names():
    st = HostState(netns=HOSTILE, count=99, max=100, by_src={"198.18.1.11": 99},
                   containers={"198.18.1.11": HOSTILE})
    findings = diagnose(st) + [Finding("x[/y]", "warning", f"name {HOSTILE}", "[bold]e", "fix\n[/z]")]
    out = text_of(doctor.render(findings, st), width=120)
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    lines = out.splitlines()
    assert lines[0] == (f"cttrace doctor: netns {safe(HOSTILE)}, table 99/100, {len(findings)} finding(s)")
    assert "warning: x[/y]" in out and f"name {safe(HOSTILE)}" in out
    assert "│ evidence: [bold]e" in out and "│ [/z]" in out                # newlines of a fix kept


def test_doctor_nothing_to_fix_exact():
    st = HostState(netns="host", count=10, max=1000)
    assert text_of(doctor.render([], st)).splitlines() == [
        "cttrace doctor: netns host, table 10/1,000, 0 finding(s)", "nothing to fix"]


def test_drop_line_and_summary_escape(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        d = SimpleNamespace(ts=1700000000.25, container=HOSTILE, netns=4026532000, proto="udp",
                            src="198.18.1.11", sport=1000, dst="198.19.0.2", dport=53, reason="table_full",
                            translated=None, dst_container=None)
        assert drops.line(d) == (f"22:13:20.250000 {safe(HOSTILE)} udp   198.18.1.11:1000 -> "
                                 "198.19.0.2:53  table_full")
        d.dst_container = HOSTILE
        assert drops.line(d).endswith(f"table_full  to {safe(HOSTILE)}")
        d.container = d.dst_container = None
        assert drops.line(d) == ("22:13:20.250000 4026532000         udp   198.18.1.11:1000 -> "
                                 "198.19.0.2:53  table_full")
    finally:
        monkeypatch.undo()
        time.tzset()
