"""`cttrace snapshot --file`: output contract, exit codes, one-line errors."""

import json
from pathlib import Path

import pytest
from tests.clirunner import runner

from tests.lab import KNOWN
from tracer.cli import main

DATA = Path(__file__).parent.parent / "data"


def run(*args, input=None):
    return runner().invoke(main, list(args), input=input)


def test_json_contract():
    r = run("snapshot", "--file", str(DATA / "known-plain.conntrack-L"), "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("total", "malformed", "by_proto", "by_state", "by_src", "by_dst", "by_dport"):
        assert key in d
    for key, want in KNOWN.items():
        assert d[key] == want, key
    assert d["malformed"] == 0
    assert all(isinstance(k, str) for k in d["by_dport"])


def test_stdin_and_filters():
    text = (DATA / "known-plain.proc").read_text()
    r = run("snapshot", "-f", "-", "--json", "--proto", "tcp", "--state", "ESTABLISHED", input=text)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["total"] == 2
    assert d["entries_read"] == 13
    assert d["filters"] == {"proto": ["tcp"], "state": ["ESTABLISHED"]}


def test_top():
    r = run("snapshot", "-f", str(DATA / "known-plain.proc"), "--json", "--top", "1")
    d = json.loads(r.stdout)
    assert d["by_src"] == {"127.0.0.5": 5}
    assert d["others"]["by_src"] == {"keys": 6, "entries": 8}


def test_terminal_output_is_plain_when_not_a_tty():
    r = run("snapshot", "-f", str(DATA / "known-plain.conntrack-L-extended"))
    assert r.exit_code == 0
    assert "\x1b[" not in r.stdout
    assert "127.0.0.5" in r.stdout and "TIME_WAIT" in r.stdout and "udp/5000" in r.stdout


def test_malformed_lines_warn_on_stderr(tmp_path):
    p = tmp_path / "t"
    p.write_text((DATA / "known-plain.proc").read_text() + "not a conntrack line\n")
    r = run("snapshot", "-f", str(p), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["malformed"] == 1
    assert "line 14" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("setup,args,msg", [
    (lambda p: None, ["-f", "{p}/missing"], "no such file"),
    (lambda p: (p / "e").write_text(""), ["-f", "{p}/e"], "empty"),
    (lambda p: (p / "b").write_bytes(b"\x00\x01\x02" * 1000), ["-f", "{p}/b"], "binary"),
    (lambda p: (p / "g").write_text("hello\nworld\n"), ["-f", "{p}/g"], "no conntrack entries"),
    (lambda p: None, ["-f", "{p}"], "directory"),
    (lambda p: None, ["-f", "x", "--netns", "y"], "exclude"),
])
def test_bad_input_is_one_line(tmp_path, setup, args, msg):
    setup(tmp_path)
    r = run("snapshot", *[a.format(p=tmp_path) for a in args])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("cttrace: error:")


@pytest.mark.parametrize("args", [["--dport", "x"], ["--dport", "70000"], ["--src", "10.0.0.0/33"],
                                  ["--proto", "nope"], ["--state", "DANCING"], ["--top", "0"]])
def test_bad_options(args):
    r = run("snapshot", "-f", str(DATA / "known-plain.proc"), *args)
    assert r.exit_code == 2
    assert "Traceback" not in r.stderr


def test_empty_table_export_is_a_table_of_zero(tmp_path):
    p = tmp_path / "t"
    p.write_text("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n")
    r = run("snapshot", "-f", str(p), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["total"] == 0


def test_markup_like_keys_render():
    from rich.console import Console
    from tracer.views.snapshot import render
    con = Console(record=True, width=80)
    con.print(render({"source": "[bold]f[/x]", "total": 1, "by_src": {"[/Y]": 1}, "malformed": 0}))
    text = con.export_text()
    assert "[/Y]" in text and "[bold]f[/x]" in text


@pytest.mark.parametrize("args,msg", [(["-f", ""], "needs a path"), (["--netns", ""], "needs a namespace")])
def test_empty_option_values(args, msg):
    r = run("snapshot", *args)
    assert r.exit_code == 1 and msg in r.stderr


@pytest.mark.parametrize("args", [["--dport", "x"], ["--top", "0"], ["--bogus"]])
def test_usage_errors_are_one_line(args):
    r = run("snapshot", "-f", str(DATA / "known-plain.proc"), *args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cttrace: error:") and "--help" in lines[0]


def _cttrace():
    import shutil
    import sys
    exe = Path(sys.executable).parent / "cttrace"
    return str(exe) if exe.exists() else shutil.which("cttrace")


@pytest.mark.parametrize("shell,msg", [
    ("{c} snapshot -f - <&-", "standard input is closed"),
    ("{c} snapshot -f {d}/known-plain.proc --json > /dev/full", "cannot write"),
])
def test_closed_stdin_and_full_disk(shell, msg):
    import subprocess
    r = subprocess.run(["bash", "-c", shell.format(c=_cttrace(), d=DATA)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and msg in r.stderr, r.stderr


def test_the_file_as_an_argument_reads_as_with_file():
    f = str(DATA / "known-plain.conntrack-L")
    a, b = run("snapshot", f, "--json"), run("snapshot", "--file", f, "--json")
    assert a.exit_code == b.exit_code == 0, a.stderr
    assert json.loads(a.stdout)["total"] == json.loads(b.stdout)["total"] == KNOWN["total"]
    r = run("snapshot", f, "--file", f)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "two files given" in r.stderr
    r = run("snapshot", f, "--netns", "x")
    assert r.exit_code != 0 and "exclude each other" in r.stderr


def test_doctor_given_a_bare_file_says_which_option_reads_it():
    r = run("doctor", str(DATA / "known-plain.conntrack-L"))
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "--file EXPORT or --capture FILE" in r.stderr
