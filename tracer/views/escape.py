"""Strings from the system (process comm, netns and container names,
addresses, file paths, anything read from a capture made elsewhere) on
their way to a terminal: never rich markup (`[/x]` prints as `[/x]`), and
no control characters (an ESC in a name cannot move the cursor, retitle
the terminal or clear the screen): they print as \\xNN."""

from __future__ import annotations

import re

from rich.text import Text

_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CTRL_KEEP_NL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _hex(m: re.Match) -> str:
    return f"\\x{ord(m.group()):02x}"


def safe(value, newlines: bool = False) -> str:
    """`value` as printable text: control characters as \\xNN (newlines
    kept if asked); None as the empty string."""
    if value is None:
        return ""
    return (_CTRL_KEEP_NL if newlines else _CTRL).sub(_hex, str(value))


def text(value, style: str = "", newlines: bool = False) -> Text:
    """A rich Text of `value`: shown literally, never parsed as markup."""
    return Text(safe(value, newlines), style=style)
