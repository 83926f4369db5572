"""The tracepoint backend, for restricted kernels (no kprobes, no fentry).

- drops: tracepoint skb:kfree_skb, filtered in BPF to NETFILTER_DROP
  (bpf/drops_tracepoint.c); exact per-source counters in a BPF map; events
  through a perf buffer, rate-limited per CPU in BPF (never the counters);
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
(those come from ctnetlink events, see tracer/ctevents.py), early drops as
events (only the counter), and which entry a table-full packet would have
created beyond its 5-tuple.
"""

from __future__ import annotations

import ctypes as ct
import os
import time
from importlib import resources

from tracer import netns as ns
from tracer.backends import BackendError
from tracer import table
from tracer.btf import BTF, BTFError
from tracer.events import (RULE, STATS, TABLE_FULL, Counters, CpuKeyC, DropEventC, DropKeyC,
                           SourceCounts, addr, decode_drop)

NAME = "tracepoint"
BLIND_SPOTS = ("no kprobes/fentry on this kernel: inserts and deletes come from ctnetlink "
               "events; early drops and insert failures are counters only")


def bpf_source(name: str = "drops_tracepoint.c") -> str:
    return (resources.files("tracer") / "bpf" / name).read_text()


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


def cflags(btf: BTF, rate: int, burst: int) -> list[str]:
    """Offsets and enum values of the running kernel, as -D constants; how
    netfilter's drops are told apart (features.drop_filter): by reason, or
    on kernels before 5.17 by the call site (NF_HOOK_SLOW*); none: no rule
    half (CT_NO_RULE_HALF, only the kprobe backend can run without it)."""
    from tracer.features import drop_filter
    how = drop_filter()
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
            "RATE_PER_SEC": rate, "RATE_BURST": burst,
        }
        if how and how[0] == "reason":
            reasons = btf.enum("skb_drop_reason")
            consts["REASON_NETFILTER_DROP"] = reasons["SKB_DROP_REASON_NETFILTER_DROP"]
        elif how:
            consts.update({k: f"{v}ULL" for k, v in how[1].items()})
        else:
            consts["CT_NO_RULE_HALF"] = 1
    except (BTFError, KeyError) as e:
        raise BackendError(f"this kernel's BTF lacks what the drop probe needs: {e}") from None
    return [f"-D{k}={v}" for k, v in consts.items()] + [f"-I{bpf_include_dir()}"]


class NetnsStats:
    """Per-CPU conntrack counters of any namespace, by inode, relative to
    when tracing started (namespaces born later start from zero)."""

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self._scan()
        self.base: dict[int, list[dict]] = {}
        for inum in list(self.paths):
            rows = self._read(inum)
            if rows is not None:
                self.base[inum] = rows
        self.last: dict[int, list[dict]] = {}

    def _scan(self) -> None:
        paths, names = ns.known()
        for ino, p in paths.items():
            self.paths.setdefault(ino, p)
        self.names.update(names)

    def _read(self, inum: int) -> list[dict] | None:
        path = self.paths.get(inum)
        if path is None:
            self._scan()
            path = self.paths.get(inum)
            if path is None:
                return None
        try:
            with ns.entered(path):
                return table.cpu_stats()
        except Exception:
            self.paths.pop(inum, None)
            return None

    def delta(self, inum: int, key: str = "drop", refresh: bool = True) -> dict[int, int]:
        """{cpu: counter delta since start} for a namespace."""
        rows = self._read(inum) if refresh else None
        if rows is None:
            rows = self.last.get(inum)      # the namespace is gone: its last reading stands
        if rows is None:
            return {}
        self.last[inum] = rows
        base = {r["cpu"]: r.get(key, 0) for r in self.base.get(inum, [])}
        return {r["cpu"]: r.get(key, 0) - base.get(r["cpu"], 0) for r in rows}

    def name(self, inum: int) -> str | None:
        return self.names.get(inum)


class Classifier:
    """table_full vs rule, per (netns, CPU), against the kernel's `drop` stat."""

    def __init__(self, stats: NetnsStats):
        self.stats = stats
        self.seen: dict[tuple[int, int], int] = {}       # last ct-less seq seen
        self.full: dict[tuple[int, int], int] = {}       # ct-less drops deemed table_full
        self.kernel: dict[tuple[int, int], int] = {}     # kernel drop delta, last read

    def reason(self, netns: int, cpu: int, seq: int, ct_attached: bool) -> str:
        if ct_attached or seq == 0:
            return RULE
        k = (netns, cpu)
        gap = seq - self.seen.get(k, 0)
        full = self.full.get(k, 0)
        if full + gap > self.kernel.get(k, 0):
            for c, v in self.stats.delta(netns).items():
                self.kernel[(netns, c)] = v
        avail = self.kernel.get(k, 0) - full
        self.seen[k] = seq
        if avail >= gap:
            self.full[k] = full + gap
            return TABLE_FULL
        self.full[k] = full + max(avail, 0)
        return RULE


class TracepointBackend:
    """The protocol of every backend: start(), poll(), counters() -> Counters,
    forget_sources(), close(); a context manager that always detaches."""

    name = NAME
    blind_spots = BLIND_SPOTS
    needs_tracepoint = True       # the kprobe backend can run without it

    def __init__(self, rate: int = 2000, burst: int = 4000, page_cnt: int = 64):
        self.rate, self.burst, self.page_cnt = rate, burst, page_cnt
        self.bpf = None
        self.lost = 0
        self._pending: list = []
        self.stats: NetnsStats | None = None
        self.classifier: Classifier | None = None
        self.boot_offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)

    def program(self) -> tuple[str, list[str]]:
        return bpf_source(), cflags(load_btf(), self.rate, self.burst)

    def start(self) -> "TracepointBackend":
        from tracer import features
        if features.mount_tracefs() is None:
            raise BackendError("tracefs is not mounted and could not be: "
                               "mount -t tracefs nodev /sys/kernel/tracing")
        tp = features.check_tracepoint()
        if not tp.ok and self.needs_tracepoint:
            raise BackendError(tp.detail)
        from tracer import headers
        hdr = headers.ensure()                 # a tree BCC can compile with (BTF gives offsets)
        try:
            from bcc import BPF
        except ImportError:
            raise BackendError("BCC is missing: apt-get install python3-bpfcc, and run "
                               "cttrace with the system Python (scripts/setup)") from None
        text, flags = self.program()
        self.stats = NetnsStats()              # baseline before the probe sees anything
        self.classifier = Classifier(self.stats)
        try:
            with features.quiet_stderr():
                self.bpf = BPF(text=text, cflags=flags)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else "failed"
            if hdr.path is None or "headers" in msg:
                raise BackendError(f"BCC cannot compile: {hdr.detail}") from None
            raise BackendError(f"the drop probe could not be loaded: {msg}") from None
        try:
            self._attach()
        except Exception:
            self.close()
            raise
        self.bpf["events"].open_perf_buffer(self._on_event, page_cnt=self.page_cnt,
                                            lost_cb=self._on_lost)
        return self

    def _attach(self) -> None:
        """Attach what is not attached by name (TRACEPOINT_PROBE attaches itself)."""

    def _on_event(self, cpu, data, size) -> None:
        self._pending.append(ct.string_at(data, size))

    def _on_lost(self, count) -> None:
        self.lost += count

    def poll(self, timeout_ms: int = 100) -> list:
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        raw, self._pending = self._pending, []
        out = []
        for data in raw:
            d = decode_drop(data, self.boot_offset)
            if not d.reason:
                d.reason = self.classifier.reason(d.netns, d.cpu, d.seq, d.ct_attached)
            out.append(d)
        return out

    def _family(self, f: int) -> str:
        return {4: "ipv4", 6: "ipv6"}.get(f, "")

    def counters(self) -> Counters:
        """Exact totals: BPF stats, per-source counts, the kernel's drop deltas."""
        st = self.bpf["stats"]
        t = {name: sum(st[ct.c_int(i)]) for i, name in enumerate(STATS)}
        by: dict[tuple[int, str], SourceCounts] = {}
        for k, v in self.bpf["sources"].items():
            src = addr(k.family, k.saddr)
            s = by.get((k.netns, src))
            if s is None:
                s = by[(k.netns, src)] = SourceCounts(k.netns, src, self._family(k.family))
            if k.ct_attached:
                s.rule += v.value            # an entry was attached: conntrack did not refuse it
            else:
                s.netfilter += v.value       # table-full or a raw/INVALID rule: told apart in total
        netns_seen = {k.netns for k, _ in self.bpf["ctless_seq"].items()}
        full = {n: sum(max(v, 0) for v in self.stats.delta(n).values()) for n in netns_seen}
        # A failed submit and the perf ring's "lost" record are the same event:
        # count it once.
        return Counters(backend=self.name, netfilter_drops=t["drops"], ctless_drops=t["ctless"],
                        table_full=full, sources=list(by.values()), events_sent=t["emitted"],
                        over_rate_limit=t["sampled_out"], lost=max(self.lost, t["submit_failed"]),
                        keys_full=t["keys_full"], attached=["skb:kfree_skb"])

    def forget_sources(self, netns: int, srcs: set[str]) -> None:
        """Drop per-source map entries of sources folded away (bounded maps
        on long runs); a drop racing with this is lost from the per-source
        count only, never from the totals."""
        if not srcs or self.bpf is None:
            return
        for name in ("sources", "ct_sources"):
            try:
                m = self.bpf[name]
            except KeyError:
                continue
            for k in list(m.keys()):
                a = getattr(k, "saddr", None) or getattr(k, "addr", None)
                if k.netns == netns and addr(k.family, a) in srcs:
                    try:
                        del m[k]
                    except KeyError:
                        pass

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


# the structs BPF and Python share must agree
assert ct.sizeof(DropEventC) == 64 and ct.sizeof(DropKeyC) == 24 and ct.sizeof(CpuKeyC) == 8
