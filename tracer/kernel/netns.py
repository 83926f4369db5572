"""Network namespaces: name or PID -> namespace file, and entering one.

A netlink socket belongs to the namespace it was created in, and /proc/sys
and /proc/thread-self/net files show the namespace of the thread that opens
them; so readers enter the target namespace in this thread, open what they
need, and come back (setns(2) on the calling thread only).
Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    """A namespace that cannot be found or entered; the message says why."""


def resolve(spec: str) -> str:
    """Path of the namespace file for a name (ip netns), a PID or a path."""
    if spec.isdigit():
        path = f"/proc/{spec}/ns/net"
        if not os.path.exists(path):
            raise NetnsError(f"--netns {spec}: no process with PID {spec}")
        return path
    if "/" in spec:
        path = spec
    else:
        path = f"/run/netns/{spec}"
    if not os.path.exists(path):
        known = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        # names under /run/netns are anyone's with access to it: shown as repr (escaped)
        hint = (f" (named namespaces: {', '.join(repr(n) for n in known[:20])}"
                + (f" and {len(known) - 20} more" if len(known) > 20 else "") + ")"
                if known else " (see 'ip netns list')")
        raise NetnsError(f"--netns {spec!r}: no such network namespace{hint}")
    return path


def known(run_netns: str = "/run/netns", proc: str = "/proc") -> tuple[dict[int, str], dict[int, str]]:
    """({inode: a path to enter it}, {inode: ip-netns name}) of every network
    namespace that is named or has a process; named paths win."""
    paths: dict[int, str] = {}
    names: dict[int, str] = {}
    try:
        named = sorted(os.listdir(run_netns))
    except OSError:
        named = []
    candidates = [(os.path.join(run_netns, n), n) for n in named] + \
        [(f"{proc}/{p}/ns/net", None) for p in os.listdir(proc) if p.isdigit()]
    for path, name in candidates:
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        paths.setdefault(ino, path)
        if name:
            names[ino] = name
    return paths, names


def inode(path: str = "/proc/thread-self/ns/net") -> int:
    return os.stat(path).st_ino


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            raise NetnsError("that file is not a network namespace (expected /run/netns/NAME "
                             "or /proc/PID/ns/net)")
        if err == errno.EPERM:
            raise NetnsError("entering another network namespace needs root (CAP_SYS_ADMIN): run with sudo")
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def pin(spec: str) -> int:
    """An open descriptor on namespace `spec` (name, PID or path): entering
    /proc/self/fd/N keeps following that namespace, and keeps it alive, if
    its name is deleted (ip netns del) or its process exits."""
    path = resolve(spec)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise NetnsError(f"--netns {spec}: permission denied: run with sudo") from None
    except OSError as e:
        raise NetnsError(f"--netns {spec}: cannot open {path}: {e.strerror}") from None


@contextmanager
def entered(spec: str | None):
    """Run the body inside namespace `spec` (None: stay where we are)."""
    if spec is None:
        yield
        return
    path = resolve(spec)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise NetnsError(f"--netns {spec}: permission denied: run with sudo") from None
    except OSError as e:
        raise NetnsError(f"--netns {spec}: cannot open {path}: {e.strerror}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
