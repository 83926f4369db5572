"""What `cttrace --version` says: the release, and the git commit the
program was built from.

From a git checkout the commit is asked of git (with "-dirty" when tracked
files differ from it); an installed build carries it in the file COMMIT
beside this module, written by the build (scripts/build-deb). Neither:
the release alone.
"""

from __future__ import annotations

import os
import subprocess

from tracer import __version__

HERE = os.path.dirname(os.path.abspath(__file__))
COMMIT_FILE = os.path.join(HERE, "COMMIT")


def from_git(root: str) -> str | None:
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        r = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=12",
                            "--exclude", "*"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _from_file() -> str | None:
    try:
        with open(COMMIT_FILE) as f:
            text = f.read(100).strip()
    except OSError:
        return None
    # written by the build; shown only if it looks like what git writes
    ok = text and all(c.isalnum() or c == "-" for c in text)
    return text if ok else None


def commit() -> str | None:
    return from_git(os.path.dirname(HERE)) or _from_file()


def describe() -> str:
    c = commit()
    return f"cttrace {__version__}" + (f" (commit {c})" if c else "")
