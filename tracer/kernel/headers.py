"""A kernel header tree for BCC, on kernels that have none of their own.

BCC compiles its C at run time against /lib/modules/$(uname -r)/build. Many
kernels have no header package (this project's microVM kernel, custom and
cloud kernels), or it is not installed. cttrace reads every struct offset
and enum value from the running kernel's BTF, so the headers only have to
let BCC compile, and any recent header tree does. Where the kernel's own
tree is missing, `ensure()` picks the installed header tree closest in
version and points BCC at it through BCC_KERNEL_SOURCE.

Debian splits a tree in two (`linux-headers-<v>-amd64`: generated headers
and config; `linux-headers-<v>-common`: the rest), which BCC_KERNEL_SOURCE
alone cannot describe (it takes one directory). So the two are merged, by
symbolic links, into one tree under /run/cttrace/kheaders/<name> (made once,
atomically; tmpfs, gone at reboot).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from tracer.core import kversion

RUN_DIR = "/run/cttrace/kheaders"
MODULES = "/lib/modules"
SEARCH = ("/usr/src", MODULES)


@dataclass
class Headers:
    path: str | None      # what BCC compiles against (None: nothing usable)
    own: bool             # the running kernel's own tree
    detail: str           # one line for `features`


def _release() -> str:
    return os.uname().release


def own_tree(release: str | None = None) -> str | None:
    build = f"{MODULES}/{release or _release()}/build"
    return build if os.path.isdir(os.path.join(build, "include", "linux")) or \
        os.path.isdir(os.path.join(build, "include", "generated")) else None


def tree_release(tree: str) -> str | None:
    """The kernel release a header tree was made for (UTS_RELEASE)."""
    try:
        with open(os.path.join(tree, "include", "generated", "utsrelease.h")) as f:
            m = re.search(r'UTS_RELEASE\s+"([^"]+)"', f.read())
        return m.group(1) if m else None
    except OSError:
        return None


def _complete(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "include", "linux")) and \
        os.path.isdir(os.path.join(path, "include", "generated"))


def _common_of(arch_dir: str) -> str | None:
    """The -common half of a Debian split tree (its Makefile includes it)."""
    try:
        with open(os.path.join(arch_dir, "Makefile")) as f:
            m = re.search(r"^include\s+(\S+)/Makefile", f.read(), re.M)
        if m and os.path.isdir(os.path.join(m.group(1), "include", "linux")):
            return m.group(1)
    except OSError:
        pass
    guess = re.sub(r"-[a-z0-9]+$", "-common", arch_dir.rstrip("/"))
    return guess if os.path.isdir(os.path.join(guess, "include", "linux")) else None


def candidates() -> list[tuple[str, str | None]]:
    """(tree, -common half or None) for every header tree BCC could use."""
    out, seen = [], set()
    dirs = []
    for base in SEARCH:
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for n in names:
            p = os.path.join(base, n, "build") if base == MODULES else os.path.join(base, n)
            dirs.append(p)
    for p in dirs:
        real = os.path.realpath(p)
        if real in seen or not os.path.isdir(os.path.join(real, "include")):
            continue
        seen.add(real)
        if _complete(real):
            out.append((real, None))
        elif os.path.isdir(os.path.join(real, "include", "generated")):
            common = _common_of(real)
            if common:
                out.append((real, common))
    return out


def _merge(tree: str, common: str) -> str:
    """One directory BCC_KERNEL_SOURCE can name, made of links to both halves."""
    name = os.path.basename(tree.rstrip("/"))
    dest = os.path.join(RUN_DIR, name)
    if _complete(dest):
        return dest
    os.makedirs(RUN_DIR, exist_ok=True)
    tmp = f"{dest}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("include", "arch/x86/include", "arch/arm64/include"):
        entries = []
        for half in (common, tree):
            d = os.path.join(half, sub)
            if os.path.isdir(d):
                entries += [os.path.join(d, e) for e in sorted(os.listdir(d))]
        if not entries:
            continue
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        for e in entries:
            link = os.path.join(tmp, sub, os.path.basename(e))
            if not os.path.lexists(link):
                os.symlink(e, link)
    for f in ("Makefile", ".config"):
        src = os.path.join(tree, f)
        if os.path.exists(src):
            os.symlink(src, os.path.join(tmp, f))
    try:
        os.rename(tmp, dest)
    except OSError:            # another cttrace made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def install_hint(release: str | None = None) -> str:
    rel = release or _release()
    return (f"install linux-headers-{rel} if your distribution has it, otherwise any kernel "
            "header package (Debian: linux-headers-amd64; offsets come from BTF, the headers "
            "only let BCC compile)")


@dataclass
class _Split(Headers):
    tree: str = ""
    common: str = ""


def find(release: str | None = None) -> Headers:
    """What BCC will compile against here, without changing anything."""
    rel = release or _release()
    own = own_tree(rel)
    if own:
        made_for = tree_release(own)
        if made_for in (None, rel):
            return Headers(own, True, f"the kernel's own headers ({os.path.realpath(own)})")
        return Headers(own, False, f"no headers of {rel}; {own} links to those of {made_for} "
                       "(scripts/setup; offsets come from BTF, the headers only let BCC compile)")
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and _complete(env):
        return Headers(env, False, f"no headers of {rel}; BCC_KERNEL_SOURCE={env}")
    cands = candidates()
    if not cands:
        return Headers(None, False, f"no kernel headers for {rel} and no other header tree: "
                       + install_hint(rel))
    want = kversion.parse(rel) or kversion.Version(0, 0)

    def distance(c):
        v = kversion.parse(os.path.basename(c[0])) or kversion.Version(0, 0)
        return (abs(v[0] - want[0]), abs(v[1] - want[1]), c[0])
    tree, common = min(cands, key=distance)
    detail = (f"no headers of {rel}; BCC uses {os.path.basename(tree)}"
              + (f" + {os.path.basename(common)}" if common else "")
              + " (offsets come from BTF; the headers only let BCC compile)")
    if common is None:
        return Headers(tree, False, detail)
    return _Split(None, False, detail, tree, common)


_ensured: dict[str, Headers] = {}


def forget() -> None:
    """Forget the trees ensure() found: the next call searches again."""
    _ensured.clear()


def ensure(release: str | None = None) -> Headers:
    """Make BCC compile here: nothing if the kernel's own headers exist,
    otherwise point BCC_KERNEL_SOURCE at the closest tree (merged if split).
    Returns what was found; path None means BCC will fail, detail says why."""
    rel = release or _release()
    if rel in _ensured and _ensured[rel].path:
        return _ensured[rel]
    h = _ensured[rel] = _ensure(rel)
    return h


def _ensure(release: str) -> Headers:
    h = find(release)
    if h.own or (h.path and (h.path == own_tree(release)          # BCC's default place
                             or os.environ.get("BCC_KERNEL_SOURCE") == h.path)):
        return h
    if isinstance(h, _Split):
        try:
            path = _merge(h.tree, h.common)
        except OSError as e:
            return Headers(None, False, f"{h.detail}; but {RUN_DIR} could not be written: "
                           f"{e.strerror}")
        h = Headers(path, False, h.detail)
    if h.path:
        os.environ["BCC_KERNEL_SOURCE"] = h.path
    return h
