"""The tracepoint backend, for restricted kernels (no kprobes, no fentry).

- drops: tracepoint skb:kfree_skb, filtered in BPF to NETFILTER_DROP
  (bpf/drops_tracepoint.c); exact per-source counters in a BPF map; events
  through a BPF ring buffer, rate-limited per CPU in BPF (never the counters);
- classification: a packet dropped by conntrack itself (table full) has no
  conntrack entry attached, and the kernel counts it in the per-CPU `drop`
  stat of its namespace, before the skb is freed. Each ct-less drop event
  carries its sequence number on its (netns, CPU); a drop is `table_full`
  while the kernel's `drop` count on that (netns, CPU) covers it, `rule`
  otherwise (ct attached: a filter/nat/mangle rule; ct-less beyond the
  kernel's count: a raw-table rule or an INVALID-state rule). Totals are the
  kernel's own; per event, a rule drop and a table-full drop on the same CPU
  within one poll can swap labels.

What it cannot see (shown to the user): insert and delete *in the kernel*
(those come from ctnetlink events, see tracer/kernel/ctevents.py), early drops as
events (only the counter), and which entry a table-full packet would have
created beyond its 5-tuple.
"""

from __future__ import annotations

import ctypes as ct
import os
import re
import socket
import time
from collections import Counter
from importlib import resources

from tracer.kernel import netns as ns
from tracer.backends import BackendError, bpfconfig
from tracer.kernel import stats as kstats
from tracer.kernel.btf import BTF, BTFError
from tracer.kernel import features, headers
from tracer.core import counters
from tracer.core.classify import Classifier
from tracer.backends import abi
from tracer.core.events import (INSERT_FAILED, INVALID, REASONS, RULE, TABLE_FULL, UNKNOWN, Counters,
                                SourceCounts, addr, decode_drop, no_drops)

NAME = "tracepoint"
BLIND_SPOTS = ("no kprobes/fentry on this kernel: inserts and deletes come from ctnetlink "
               "events; early drops and insert failures are counters only")


_INCLUDE = re.compile(r'^#include "([\w.]+)"[ \t]*$', re.M)


def bpf_source(name: str = "drops_tracepoint.c") -> str:
    """A program's text with the bpf/ headers it includes ("...") inlined,
    each once: BCC rewrites map calls (m.lookup(), m.ringbuf_output()) only
    in the main text, never in an included file."""
    seen: set[str] = set()

    def expand(n: str) -> str:
        if n in seen:
            return ""
        seen.add(n)
        text = (resources.files("tracer") / "bpf" / n).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)
    return expand(name)


def load_btf(module: str | None = None) -> BTF:
    """The running kernel's BTF, with a module's split BTF on top if it has one."""
    try:
        btf = BTF.load()
        path = f"/sys/kernel/btf/{module}" if module else None
        if path and os.path.exists(path):
            btf = BTF.load(path, base=btf)
        return btf
    except BTFError as e:
        raise BackendError(f"{e}: the kernel needs CONFIG_DEBUG_INFO_BTF "
                           "(struct offsets are read from it)") from None


def bpf_include_dir() -> str:
    return str(resources.files("tracer") / "bpf")


def cflags(btf: BTF, rate: int, burst: int, ring_pages: int) -> list[str]:
    """Offsets and enum values of the running kernel, as -D constants
    (each documented in tracer/backends/bpfconfig.py); how netfilter's drops
    are told apart (features.drop_filter): by reason, or on kernels before
    5.17 by the call site (NF_HOOK_SLOW*); none: no rule half
    (CT_NO_RULE_HALF, only the kprobe backend can run without it)."""
    how = features.drop_filter()
    try:
        consts = {
            "OFF_SKB_HEAD": btf.offset("sk_buff", "head"),
            "OFF_SKB_NH": btf.offset("sk_buff", "network_header"),
            "OFF_SKB_NFCT": btf.offset("sk_buff", "_nfct"),
            "OFF_SKB_DEV": btf.offset("sk_buff", "dev"),
            "OFF_SKB_SK": btf.offset("sk_buff", "sk"),
            "OFF_DEV_NET": btf.offset("net_device", "nd_net"),
            "OFF_SK_NET": btf.offset("sock", "__sk_common.skc_net"),
            "OFF_NET_INUM": btf.offset("net", "ns.inum"),
            "RATE_PER_SEC": rate, "RATE_BURST": burst, "RINGBUF_PAGES": ring_pages,
        }
        # net->net_cookie (5.14+; never reused, unlike inodes)
        try:
            consts["OFF_NET_COOKIE"] = btf.offset("net", "net_cookie")
        except BTFError:
            consts["OFF_NET_COOKIE"] = -1
        consts.update(ct_tuple_consts(btf))
        if how and how[0] == "reason":
            reasons = btf.enum("skb_drop_reason")
            consts["REASON_NETFILTER_DROP"] = reasons["SKB_DROP_REASON_NETFILTER_DROP"]
        elif how:
            consts.update({k: f"{v}ULL" for k, v in how[1].items()})
        else:
            consts["CT_NO_RULE_HALF"] = 1
    except (BTFError, KeyError) as e:
        raise BackendError(f"this kernel's BTF lacks what the drop probe needs: {e}") from None
    return bpfconfig.cflags(consts, bpf_include_dir())


def ct_offsets(btf: BTF) -> dict:
    """struct nf_conn's original tuple (T_*, CT_TUPLE, CT_NET): BTFError
    where the BTF does not describe it."""
    return {
        "T_SRC_U3": btf.offset("nf_conntrack_tuple", "src.u3"),
        "T_SRC_PORT": btf.offset("nf_conntrack_tuple", "src.u"),
        "T_L3NUM": btf.offset("nf_conntrack_tuple", "src.l3num"),
        "T_DST_U3": btf.offset("nf_conntrack_tuple", "dst.u3"),
        "T_DST_PORT": btf.offset("nf_conntrack_tuple", "dst.u"),
        "T_PROTONUM": btf.offset("nf_conntrack_tuple", "dst.protonum"),
        "CT_TUPLE": btf.offset("nf_conn", "tuplehash") + btf.offset("nf_conntrack_tuple_hash", "tuple"),
        "CT_NET": btf.offset("nf_conn", "ct_net"),
    }


def ct_tuple_consts(btf: BTF) -> dict:
    """ct_offsets() and the status bits that say whether a drop may be a
    clash at confirm, where the BTF describes them (nf_conntrack built in,
    or its module's split BTF); {} otherwise."""
    try:
        status = btf.enum("ip_conntrack_status")
        return {**ct_offsets(btf), "CT_STATUS": btf.offset("nf_conn", "status"),
                "IPS_CONFIRMED_": status["IPS_CONFIRMED"],
                "IPS_SRC_NAT_DONE_": status["IPS_SRC_NAT_DONE"], "HAVE_CT_TUPLE": 1}
    except (BTFError, KeyError):
        return {}


def layout(cls) -> tuple:
    """((field, offset, size), ...) of a ctypes Structure."""
    return tuple((f[0], getattr(cls, f[0]).offset, getattr(cls, f[0]).size) for f in cls._fields_)


# map -> (struct of its keys, struct of its values) in bpf/events.h
MAP_STRUCTS = {"sources": ("drop_key", None), "drop_seq": ("cpu_key", None),
               "ct_sources": ("src_key", "src_val")}


def check_abi(bpf) -> None:
    """The structs BCC compiled (its map Key/Leaf classes, the ring's event
    class) laid out as tracer/backends/abi.py says; else BackendError."""
    got = {"drop_event": type(bpf["events"].event(ct.create_string_buffer(
        ct.sizeof(abi.DropEvent))))}
    for name, (key, leaf) in MAP_STRUCTS.items():
        try:
            m = bpf[name]
        except KeyError:
            continue
        got[key] = m.Key
        if leaf:
            got[leaf] = m.Leaf
    for struct, cls in got.items():
        want = abi.STRUCTS[struct][1]
        if layout(cls) != want:
            raise BackendError(f"struct {struct} as compiled differs from tracer/backends/abi.py "
                               f"(run scripts/gen-abi after changing bpf/events.h): {layout(cls)}")


SO_NETNS_COOKIE = 71     # include/uapi/asm-generic/socket.h (Linux 5.14+)


def netns_cookie() -> int:
    """The current namespace's cookie (SO_NETNS_COOKIE, 5.14+), 0 if unknown."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return 0


class NetnsStats:
    """Per-CPU conntrack counters and fill of any namespace, counted since
    tracing started, by key (cookie, inode): a reused inode is another key.
    Namespaces known at start count from their reading then; those born
    later from zero. Wraps of the kernel's 32-bit per-CPU counters: see
    tracer/core/counters.py."""

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self._missing: dict[int, float] = {}     # inode -> when a walk of /proc did not find it
        self._scan()
        self.start: dict[int, tuple[int, list[dict]]] = {}    # inode -> (cookie, rows) at start
        for inum in list(self.paths):
            got = self._read(inum)
            if got is not None:
                self.start[inum] = (got[0], got[1])
        self.acc: dict[tuple, counters.Accumulator] = {}
        self.fill: dict[tuple, tuple[int | None, int | None]] = {}

    def _scan(self) -> None:
        paths, names = ns.known()
        for ino, p in paths.items():
            self.paths.setdefault(ino, p)
        self.names.update(names)

    def _read(self, inum: int):
        """(cookie, per-CPU rows, count, max) of a namespace now, or None."""
        path = self.paths.get(inum)
        if path is None:
            # not seen yet: walk /proc at once; gone (not found by the last
            # walk): again only after a second, or every reading of a gone
            # namespace would walk /proc
            missed = self._missing.get(inum)
            if missed is not None and time.monotonic() - missed < 1.0:
                return None
            self._scan()
            path = self.paths.get(inum)
            if path is None:
                self._missing[inum] = time.monotonic()
                return None
        try:
            with ns.entered(path):
                if ns.inode() != inum:             # the path now leads elsewhere (PID reused)
                    raise OSError("namespace changed")
                st = kstats.read()
                return netns_cookie(), st.cpu, st.count, st.max
        except Exception:
            self.paths.pop(inum, None)
            return None

    def refresh(self, key: tuple[int, int]) -> bool:
        """Read a namespace (key: (cookie, inode)); False if it cannot be
        read any more (its last reading stands)."""
        cookie, inum = key
        got = self._read(inum)
        if got is None or (cookie and got[0] and got[0] != cookie):
            return False
        acc = self.acc.get(key)
        if acc is None:
            first = self.start.get(inum)
            known = first is not None and (not cookie or not first[0] or first[0] == cookie)
            acc = self.acc[key] = counters.Accumulator(first[1] if known else None)  # known at start: from then
        acc.add(got[1])
        self.fill[key] = (got[2], got[3])
        return True

    def kernel(self, key: tuple[int, int], stat: str, refresh: bool = True) -> dict[int, int]:
        """{cpu: count since tracing started} of a kernel stat of a namespace."""
        if refresh:
            self.refresh(key)
        acc = self.acc.get(key)
        return acc.per_cpu(stat) if acc is not None else {}

    def per_cpu(self, key: tuple[int, int]) -> dict[str, dict[int, int]]:
        """{stat: {cpu: count since tracing started}} of a namespace, read now."""
        self.refresh(key)
        acc = self.acc.get(key)
        return acc.by_stat() if acc is not None else {}

    def at_limit(self, key: tuple[int, int]) -> bool | None:
        """Whether the namespace's table is (nearly) full, as last read."""
        count, limit = self.fill.get(key, (None, None))
        if count is None or not limit:
            return None
        return count >= 0.9 * limit

    def forget(self, key: tuple[int, int]) -> None:
        self.acc.pop(key, None)
        self.fill.pop(key, None)

    def name(self, inum: int) -> str | None:
        return self.names.get(inum)


class TracepointBackend:
    """The protocol of every backend: start(), poll(), counters() -> Counters,
    forget_sources(), close(); a context manager that always detaches."""

    name = NAME
    blind_spots = BLIND_SPOTS
    needs_tracepoint = True       # the kprobe backend can run without it

    def __init__(self, rate: int = 2000, burst: int = 4000, page_cnt: int = 256):
        # one ring for every CPU and both programs: page_cnt pages per CPU
        # (the two perf buffers it replaces had 128 each)
        self.rate, self.burst, self.page_cnt = rate, burst, page_cnt
        self.bpf = None
        self._pending: list = []
        # drop_seq is an LRU map: the last count read of each key stays here
        self._seq: dict[tuple, tuple[int, int]] = {}   # (cookie, netns, cpu, class) -> (base, last)
        # what forget_sources() took out of the per-source maps, per namespace:
        # the per-namespace reason totals built from those maps keep it
        # (a counter never goes down when an idle source is forgotten)
        self.forgotten: dict[int, Counter] = {}
        self.stats: NetnsStats | None = None
        self.classifier: Classifier | None = None
        self.boot_offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)

    def program(self) -> tuple[str, list[str]]:
        return bpf_source(), cflags(load_btf("nf_conntrack"), self.rate, self.burst, self.ring_pages())

    def ring_pages(self) -> int:
        return bpfconfig.ring_pages(self.page_cnt, os.cpu_count() or 1)

    def start(self) -> "TracepointBackend":
        if features.mount_tracefs() is None:
            raise BackendError("tracefs is not mounted and could not be: "
                               "mount -t tracefs nodev /sys/kernel/tracing")
        tp = features.check_tracepoint()
        if not tp.ok and self.needs_tracepoint:
            raise BackendError(tp.detail)
        hdr = headers.ensure()                 # a tree BCC can compile with (BTF gives offsets)
        try:
            from bcc import BPF     # here, not at the top: BCC is only needed to trace (and is slow to load)
        except ImportError:
            raise BackendError("BCC is missing: apt-get install python3-bpfcc, and run "
                               "cttrace with the system Python (scripts/setup)") from None
        text, flags = self.program()
        self.stats = NetnsStats()              # baseline before the probe sees anything
        self.classifier = Classifier(self.stats.per_cpu, self.stats.at_limit)
        try:
            with features.quiet_stderr():
                self.bpf = BPF(text=text, cflags=flags)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else "failed"
            if hdr.path is None or "headers" in msg:
                raise BackendError(f"BCC cannot compile: {hdr.detail}") from None
            raise BackendError(f"the drop probe could not be loaded: {msg}") from None
        try:
            check_abi(self.bpf)
            self._attach()
        except Exception:
            self.close()
            raise
        self.bpf["events"].open_ring_buffer(self._on_event)
        return self

    def _attach(self) -> None:
        """Attach what is not attached by name (TRACEPOINT_PROBE attaches itself)."""

    def _on_event(self, ctx, data, size) -> None:
        self._pending.append(ct.string_at(data, size))

    def poll(self, timeout_ms: int = 100) -> list:
        self.bpf.ring_buffer_poll(timeout=timeout_ms)
        raw, self._pending = self._pending, []
        out = []
        for data in raw:
            d = decode_drop(data, self.boot_offset)
            if not d.reason:
                d.reason = RULE if d.ct_attached and not d.clash_candidate else \
                    self.classifier.reason(d.netns_key, d.cpu, d.seq, d.ct_attached)
            out.append(d)
        return out

    def _family(self, f: int) -> str:
        return {4: "ipv4", 6: "ipv6"}.get(f, "")

    def counters(self) -> Counters:
        """Exact totals: BPF stats, per-source counts, and the drops of each
        reason, matched with the kernel's per-CPU counters (see tracer/core/classify.py)."""
        st = self.bpf["stats"]
        t = {name: sum(st[ct.c_int(i)]) for i, name in enumerate(abi.STATS)}
        by: dict[tuple[int, str], SourceCounts] = {}
        for k, v in self.bpf["sources"].items():
            src = addr(k.family, k.saddr)
            s = by.get((k.netns, src))
            if s is None:
                s = by[(k.netns, src)] = SourceCounts(k.netns, src, self._family(k.family))
            s.netfilter += v.value          # the cause is told apart in total only
        per_ns = self._reason_totals(t, by)
        reasons = {r: sum(x[r] for x in per_ns.values()) for r in REASONS}
        reasons[UNKNOWN] = t["seq_full"]             # drops whose class could not be told
        reasons[RULE] = max(reasons[RULE] - t["seq_full"], 0)
        # An event the ring had no room for: counted by the program (per CPU).
        return Counters(backend=self.name, netfilter_drops=t["nf_drops"], ctless_drops=t["ctless"],
                        table_full={n: r[TABLE_FULL] for n, r in per_ns.items()},
                        by_reason=reasons, reasons_by_netns=per_ns, sources=list(by.values()),
                        events_sent=t["emitted"], over_rate_limit=t["sampled_out"],
                        lost=t["submit_failed"], keys_full=t["keys_full"],
                        attached=["skb:kfree_skb"])

    def _reason_totals(self, t: dict, by: dict) -> dict[int, dict[str, int]]:
        """Drops per reason in each namespace (by inode): the drops of each
        class on each (namespace, CPU) (BPF sequences) matched with the
        kernel's counts there; the rest of a namespace's drops are rules'."""
        for k, v in self.bpf["drop_seq"].items():
            key = (k.netns_cookie, k.netns, k.cpu, k.ct_attached)
            base, last = self._seq.get(key, (0, 0))
            if v.value < last:          # evicted from the LRU map and numbered again
                base += last
            self._seq[key] = (base, v.value)
        classes: dict[tuple, dict[int, list[int]]] = {}
        for (cookie, netns, cpu, attached), (base, last) in self._seq.items():
            classes.setdefault((cookie, netns), {}).setdefault(cpu, [0, 0])[attached] = base + last
        out: dict[int, dict[str, int]] = {}
        for key, cpus in classes.items():
            drop = self.stats.kernel(key, "drop")
            ins = self.stats.kernel(key, "insert_failed", refresh=False)
            chain = self.stats.kernel(key, "chaintoolong", refresh=False)
            refused = failed = 0
            for cpu, (ctless, with_ct) in cpus.items():
                c = {"drop": drop.get(cpu, 0), "insert_failed": ins.get(cpu, 0),
                     "chaintoolong": chain.get(cpu, 0)}
                failed += min(with_ct, c["insert_failed"])    # a chain too long too: a failed insert
                refused += min(ctless, counters.table_full_drops(c))
            invalid = min(self.classifier.invalid.get(key, 0), refused)
            r = out.setdefault(key[1], no_drops())
            r[TABLE_FULL] += refused - invalid
            r[INSERT_FAILED] += failed
            r[INVALID] += invalid
        for (netns, _), s in by.items():          # every drop not conntrack's is a rule's
            r = out.setdefault(netns, no_drops())
            r[RULE] += s.netfilter
        for netns, gone in self.forgotten.items():
            if gone["netfilter"]:
                r = out.setdefault(netns, no_drops())
                r[RULE] += gone["netfilter"]
        for r in out.values():
            r[RULE] = max(r[RULE] - r[TABLE_FULL] - r[INSERT_FAILED] - r[INVALID], 0)
        return out

    def forget_sources(self, netns: int, srcs: set[str]) -> dict[str, int]:
        """Drop per-source map entries of sources folded away (bounded maps
        on long runs). Returns each source's drops (SourceCounts.all_drops)
        as read just before its entries went: what it counted since the
        last counters() too (a source without entries of its own is pruned
        while the table is full and it is still dropping: 5 of 922,075
        drops fell in that gap in a 20-minute soak). What goes is kept in
        `forgotten`, so the namespace's totals by reason never go down; a
        drop in the microseconds between that read and the delete is lost
        from the per-source count (and from the rule total built from it),
        never from the kernel's counters. Called by the pump only, as
        counters() is (serve's scrapes read the pump's last Counters)."""
        out: dict[str, int] = {}
        if not srcs or self.bpf is None:
            return out
        gone = self.forgotten.setdefault(netns, Counter())
        for name in ("sources", "ct_sources"):
            try:
                m = self.bpf[name]
            except KeyError:
                continue
            for k in list(m.keys()):
                a = getattr(k, "saddr", None) or getattr(k, "addr", None)
                src = addr(k.family, a)
                if k.netns == netns and src in srcs:
                    try:
                        v = m[k]
                        del m[k]
                    except KeyError:
                        continue
                    # sources: u64 netfilter drops; ct_sources: struct (kprobe.py's counters())
                    n = getattr(v, "value", None)
                    if n is not None:
                        gone["netfilter"] += n
                    else:
                        gone["table_full"] += v.table_full
                        gone["insert_failed"] += v.insert_failed
                    out[src] = out.get(src, 0) + (n if n is not None else v.table_full + v.insert_failed)
        return out

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None

    def __enter__(self) -> "TracepointBackend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

