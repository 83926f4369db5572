"""This process's own memory: give back what the BPF compile leaves behind,
and read what the process holds (for `serve`'s self-metrics and the
benchmarks).

BCC compiles the probes with clang and LLVM inside this process. Afterwards:

- the compiler's heap (tens of MB of freed malloc chunks: ASTs, IR, the
  code generator's tables) stays in the process, because glibc's malloc
  keeps freed memory for reuse; `malloc_trim(0)` hands the free pages back
  (glibc since 2.8 releases free pages inside the heap too, not only its
  top);
- the code of libLLVM and libclang-cpp that the compile ran (about 75 MB
  here) stays resident, file-backed. The libraries cannot be unloaded
  (libbcc links them), but their pages are clean copies of the files, so
  they can be dropped (page_out) and a page is read back from the file
  only if it runs again (BCC runs no compiler code after the load).
  What stays: their relocated read-only data (about 10 MB, anonymous: the
  dynamic loader wrote pointers into it, so there is no clean copy to
  fall back to) and the mappings themselves (address space, no memory).

Both are advice: on another libc, or a kernel without MADV_PAGEOUT, they
do nothing and say so in their return value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

MADV_DONTNEED = 4          # include/uapi/asm-generic/mman-common.h
MADV_PAGEOUT = 21          # same file (Linux 5.4)
COMPILER_LIBS = ("libLLVM", "libclang")

_SMAPS_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s+(.*)$")


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def trim_heap() -> bool:
    """Return malloc's free memory to the kernel (glibc's malloc_trim(0)).
    True if memory was released; False if none was, or this libc cannot."""
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_size_t]
    return bool(fn(0))


def mappings(smaps_path: str = "/proc/self/smaps") -> list[tuple[int, int, str, str, int]]:
    """(start, end, perms, path, anonymous bytes) of each mapping."""
    out = []
    try:
        with open(smaps_path) as f:
            for line in f:
                m = _SMAPS_HEAD.match(line)
                if m:
                    out.append([int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4), 0])
                elif line.startswith("Anonymous:") and out:
                    out[-1][4] = int(line.split()[1]) * 1024
    except OSError:
        return []
    return [tuple(x) for x in out]


def page_out(names=COMPILER_LIBS, smaps_path: str = "/proc/self/smaps") -> int:
    """Drop the resident pages of the read-only mappings of the libraries
    whose file name contains one of `names`; their code is read back from
    the file if it runs again. Each range is first offered for reclaim
    (MADV_PAGEOUT: the page cache lets the page go if no other process maps
    it), then, where the range holds no page of its own (no anonymous
    copy-on-write page: nothing that exists only here), unmapped from this
    process (MADV_DONTNEED: it stays in the page cache for the others).
    Returns the bytes of the ranges advised."""
    libc = _libc()
    if libc is None:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for start, end, perms, path, anon in mappings(smaps_path):
        if "w" in perms or not any(n in path.rsplit("/", 1)[-1] for n in names):
            continue
        madvise(start, end - start, MADV_PAGEOUT)      # EINVAL before 5.4: the next one still helps
        if not anon and madvise(start, end - start, MADV_DONTNEED) == 0:
            done += end - start
    return done


def release_after_compile() -> dict:
    """After the probes are compiled and loaded: trim the heap and page out
    the compiler's code. What was done, for diagnostics."""
    return {"heap_trimmed": trim_heap(), "paged_out_bytes": page_out()}


def status(pid: int | str = "self") -> dict[str, int]:
    """Memory figures of a process from /proc/PID/status, in bytes: VmRSS,
    VmHWM, RssAnon, RssFile, RssShmem (those the kernel shows)."""
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    return {k: int(v) * 1024 for k, v in
            re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+) kB$", text, re.M)}
