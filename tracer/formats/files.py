"""Files others made and files we make: opening one for reading (an export,
a capture) with one message per way it can fail, in the reader's own error
class; new private files beside a name (O_CREAT|O_EXCL|O_NOFOLLOW), and the
ready-file the tracing commands write once they trace."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ReadyFileError(Exception):
    """The ready-file cannot be written; the message says why."""


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


def kind_of(path: str) -> str | None:
    """What is at `path`, never followed: None (nothing), "directory", "a file", ..."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None                          # os.open will say what is wrong
    if stat.S_ISLNK(st.st_mode):
        return f"a symbolic link to {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    return "a file" if stat.S_ISREG(st.st_mode) else "not a regular file"


def temp_next_to(path: str, mode: int, error: type[Exception]) -> tuple[str, int]:
    """(name, fd) of a new private file beside `path` (O_EXCL|O_NOFOLLOW);
    `error` (one line) when none can be made."""
    d, base = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(d, f".{base}.{os.urandom(4).hex()}.tmp")
        try:
            return tmp, os.open(tmp, NEW_FILE, mode)
        except FileExistsError:
            continue
        except OSError as e:
            raise error(f"{path}: cannot create a file in {d or '.'}: {e.strerror}") from None
    raise error(f"{path}: cannot make a temporary file next to it")


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def check_ready_file(path: str) -> None:
    """Fail now (before probes attach) if the ready-file cannot be written:
    a directory, or a directory we cannot create files in."""
    if kind_of(path) == "directory":
        raise ReadyFileError(f"--ready-file {path} is a directory; give a file name")
    tmp, fd = temp_next_to(path, 0o644, ReadyFileError)
    os.close(fd)
    os.unlink(tmp)


def write_ready_file(path: str) -> None:
    """Our PID in `path`, written to a temporary file beside it and renamed
    over it: never through a symbolic link, never truncating the file
    that was there (another user's file in a sticky directory cannot be
    replaced: that is an error)."""
    tmp, fd = temp_next_to(path, 0o644, ReadyFileError)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(tmp, path)
    except OSError as e:
        unlink_quietly(tmp)
        raise ReadyFileError(f"--ready-file {path}: cannot write: {e.strerror}") from None
