"""One version everywhere, and `cttrace --version` naming the commit."""

import re
import subprocess
from pathlib import Path

from tracer import __version__, version
from tests.clirunner import runner
from tracer.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_changelogs_agree_with_the_package_version():
    deb = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(r"cttrace \(([^)]+)\)", deb).group(1) == __version__
    md = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", md, re.M).group(1) == __version__


def test_version_from_a_checkout_names_its_commit():
    r = runner().invoke(main, ["--version"])
    assert r.exit_code == 0
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12",
                          "--exclude", "*"], capture_output=True, text=True)
    if git.returncode == 0:
        assert r.output == f"cttrace {__version__} (commit {git.stdout.strip()})\n"
    else:
        assert r.output.startswith(f"cttrace {__version__}")


def test_version_from_a_build_reads_the_commit_file(tmp_path, monkeypatch):
    monkeypatch.setattr(version, "from_git", lambda root: None)
    f = tmp_path / "COMMIT"
    monkeypatch.setattr(version, "COMMIT_FILE", str(f))
    assert version.describe() == f"cttrace {__version__}"          # no file: the version alone
    f.write_text("0123456789ab-dirty\n")
    assert version.describe() == f"cttrace {__version__} (commit 0123456789ab-dirty)"
    f.write_text("\x1b[2J; rm -rf /\n")                                # not what git writes: ignored
    assert version.describe() == f"cttrace {__version__}"
