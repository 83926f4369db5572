"""`cttrace --help` and shell completion list the commands from
tracer.cli.COMMANDS without loading their modules: the list must say what
each command's own help says, as click would have shortened it."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete

from tests.clirunner import runner
from tracer.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_listed_help_is_the_commands_own(name):
    from click.utils import make_default_short_help
    cmd = getattr(importlib.import_module(f"tracer.cli.{name}"), name)
    for limit in (45, 60, 80, 1000):
        assert make_default_short_help(COMMANDS[name], limit) == cmd.get_short_help_str(limit), limit


def test_help_lists_every_command_without_loading_them():
    code = ("import sys; from tracer.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('tracer.cli.')), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"})
    assert r.stderr.strip() == "[]", r.stderr
    listed = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == list(COMMANDS)
    out = runner().invoke(main, ["--help"]).output
    assert "\n  top       Live view of the conntrack table: how full" in out


def test_completion_of_command_names_and_options():
    def complete(args, incomplete):
        return [c.value for c in ShellComplete(main, {}, "cttrace", "_CTTRACE_COMPLETE")
                .get_completions(args, incomplete)]
    assert complete([], "") == list(COMMANDS)
    assert complete([], "d") == ["drops", "doctor"]
    assert complete([], "--v") == ["--version"]
    assert complete(["top"], "--gr") == ["--group"]
