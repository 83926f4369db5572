"""Opening a file someone else made (an export, a capture): one message per
way it can fail, in the reader's own error class."""

from __future__ import annotations

from typing import BinaryIO


def open_input(path: str, error: type[Exception], kind: str, denied: str) -> BinaryIO:
    """`path` opened for reading bytes, else `error` with one line saying
    what is wrong: `kind` names what to give instead of a directory,
    `denied` what to do when it may not be read."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory; give {kind}") from None
    except PermissionError:
        raise error(f"{path}: permission denied ({denied})") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
