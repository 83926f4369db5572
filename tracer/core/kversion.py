"""The kernel version, parsed in one place from a release string
(`uname -r`, a capture's header, a header tree's directory name)."""

from __future__ import annotations

import re
from typing import NamedTuple

_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


class Version(NamedTuple):
    major: int
    minor: int
    patch: int = 0

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)


def parse(release: str | None) -> Version | None:
    """"6.1.0-28-amd64" -> Version(6, 1, 0); "5.10" -> (5, 10, 0); the first
    "N.N[.N]" anywhere ("linux-headers-6.12.9+bpo-amd64"); None if there is none."""
    m = _RELEASE.search(release or "")
    if m is None:
        return None
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
