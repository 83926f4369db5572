"""Read a live host into a doctor.HostState (the edge of `cttrace doctor`)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import time

from tracer.kernel import ctnetlink
from tracer.core import counters, forecast, kversion
from tracer.core import nat
from tracer.kernel import stats as kstats
from tracer.kernel import netns as ns
from tracer.core.hoststate import HostState
from tracer.core.snapshot import Columns, Summary
from tracer.core.filters import Filter
from tracer.formats import export as tablefile
from tracer.kernel.btf import BTF, BTFError

TIMEOUTS = forecast.SCHEDULE_SYSCTLS
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
# The kernel's defaults (nf_conntrack_proto_{tcp,udp,icmp,icmpv6,generic,gre}.c; the
# values of this project's 6.18 host; older kernels had udp_timeout_stream=180).
# An export carries no sysctls: `doctor --file` assumes these unless told.
DEFAULT_TIMEOUTS = {"tcp_timeout_established": 432000, "tcp_timeout_time_wait": 120,
                    "tcp_timeout_syn_sent": 120, "tcp_timeout_close_wait": 60, "udp_timeout": 30,
                    "udp_timeout_stream": 120, "icmp_timeout": 30, "generic_timeout": 600,
                    "tcp_timeout_syn_recv": 60, "tcp_timeout_fin_wait": 120,
                    "tcp_timeout_last_ack": 30, "tcp_timeout_close": 10, "icmpv6_timeout": 30,
                    "gre_timeout": 30, "gre_timeout_stream": 180}
SETTINGS = frozenset(TIMEOUTS) | {"max", "buckets"}
# The largest value each setting can have on any kernel: nf_conntrack_max is
# an int (proc_dointvec), the hash size an unsigned int; timeouts:
# forecast.MAX_TIMEOUT. ASCII digits only ('²' is a digit to str.isdigit).
SETTING_MAX = {"max": 2**31 - 1, "buckets": 2**32 - 1}
_DIGITS = re.compile(r"[0-9]{1,10}")
def rule_commands(tables: tuple[str, ...] = ("raw", "nat"), net: str = "/proc/thread-self/net",
                  with_nft: bool = True, which=shutil.which) -> list[tuple[str, list[str]]]:
    """(tool, argv) of the commands that list `tables` of the namespace whose
    /proc/.../net is `net`, without creating any: listing a table with
    iptables-legacy-save instantiates it in that namespace (seen on 6.18:
    `nat` appears in ip_tables_names), while the nf_tables variant creates
    nothing. So the nft variants run always, a legacy one (or a plain
    iptables-save with no nft variant beside it) only for a table that
    already exists; then (with_nft) nft's whole ruleset."""
    out: list[tuple[str, list[str]]] = []
    for fam, names in (("iptables", "ip_tables_names"), ("ip6tables", "ip6_tables_names")):
        try:
            with open(f"{net}/{names}") as f:
                existing = set(f.read().split())
        except OSError:
            existing = set()
        nft = which(f"{fam}-nft-save")
        for t in tables:
            if nft:
                out.append((fam, [f"{fam}-nft-save", "-t", t]))
            elif t in existing and which(f"{fam}-save"):
                out.append((fam, [f"{fam}-save", "-t", t]))
        if fam == "iptables" and nft and which("iptables-legacy-save"):
            out += [("iptables-legacy", ["iptables-legacy-save", "-t", t]) for t in tables if t in existing]
    if with_nft and which("nft"):
        out.append(("nft", ["nft", "-a", "list", "ruleset"]))
    return out


NAT_WORDS = ("MASQUERADE", "SNAT", "DNAT", "masquerade", "snat ", "dnat ", "redirect", "REDIRECT")


def rules_text() -> str:
    """The raw- and nat-table rules of the current namespace (iptables nft and
    legacy, ip6tables, nftables with rule handles), one section per command,
    each starting with "# cttrace: <tool>" (nat.parse_rules reads them)."""
    out = []
    for tool, cmd in rule_commands():
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            if r.stdout.strip():
                out.append(f"# cttrace: {tool}\n{r.stdout}")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "\n".join(out)


def max_scope(release: str | None = None) -> str:
    """Whose nf_conntrack_max does this namespace see? Read-only (mode 0444)
    in a child namespace: the one global value ("global"; every kernel from
    5.10.35/5.11.19/5.12.2/5.13, upstream 2671fa4dc010, through 6.18 at least).
    Writable there: either the old bug (before those stable releases the file
    was writable in a namespace owned by the initial user namespace, but it
    wrote the global variable: "global-writable") or a kernel with a per-netns
    limit (struct netns_ct has sysctl_max: netfilter's nf-next after 6.18,
    the lvxiafei patch; effective limit min(own, initial namespace's): "netns").
    BTF tells the two apart; without BTF, no kernel up to 6.18 has the latter."""
    try:
        mode = os.stat(CT_MAX).st_mode
    except OSError:
        return ""
    if not mode & stat.S_IWUSR:
        return "global"
    own = per_netns_max()
    if own is None:
        v = kversion.parse(release if release is not None else platform.release())
        own = v is not None and v.at_least(6, 19)
    return "netns" if own else "global-writable"


def _initial_netns() -> int:
    """Inode of the initial network namespace: PID 1's, or (where that is
    hidden, as in some sandboxes) the caller's own, where cttrace runs."""
    try:
        return ns.inode("/proc/1/ns/net")
    except OSError:
        return ns.inode()


def per_netns_max() -> bool | None:
    """Whether this kernel keeps nf_conntrack_max per namespace (a member
    sysctl_max in struct netns_ct, BTF); None when BTF cannot tell."""
    try:
        btf = BTF.load()
        btf.find("netns_ct")
    except BTFError:
        return None
    try:
        btf.offset("netns_ct", "sysctl_max")
        return True
    except BTFError:
        return False


def effective_max(own: int | None, initial: int | None) -> int | None:
    """The limit a namespace with its own nf_conntrack_max meets: the smaller
    of its own and the initial namespace's, 0 meaning no limit
    (nf_conntrack_max(net) in the per-netns change)."""
    if not own or not initial:
        return own or initial
    return min(own, initial)


def entry_size() -> tuple[int | None, str]:
    """Bytes per entry of this kernel (forecast.entry_size): the slab's
    object size where /proc/slabinfo shows it, else BTF's sizeof(nf_conn)."""
    slab = None
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("nf_conntrack "):
                    slab = int(line.split()[3])
                    break
    except (OSError, ValueError, IndexError):
        pass
    if slab:
        return forecast.entry_size(None, slab)
    size = None
    try:
        base = BTF.load()
        try:
            size = base.size("nf_conn")
        except BTFError:                  # nf_conntrack built as a module: its own BTF
            size = BTF.load("/sys/kernel/btf/nf_conntrack", base=base).size("nf_conn")
    except BTFError:
        pass
    return forecast.entry_size(size, slab)


class _Addr(dict):
    """Raw address bytes -> text, each converted once."""

    def __missing__(self, raw: bytes) -> str:
        v = self[raw] = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        return v


def nat_usage() -> nat.Usage:
    """Both tuples of every entry of the current namespace, into a Usage
    (call inside netns.entered)."""
    u = nat.Usage()
    addr = _Addr()
    for proto, osrc, osport, odst, odport, rsrc, rsport, rdst, rdport in ctnetlink.both_tuples():
        u.add(proto, addr[osrc], osport, addr[odst], odport, addr[rsrc], rsport, addr[rdst], rdport)
    return u


def read_live(netns: str | None = None, window: float = 1.0, names=None) -> HostState:
    global_max = kstats.sysctl("nf_conntrack_max")  # the caller's (initial) namespace
    initial = _initial_netns()
    with ns.entered(netns):
        scope = "global"
        if netns and ns.inode() != initial:
            scope = max_scope()
        st1 = kstats.read()
        t1 = time.monotonic()
        cols = Columns()
        ages = forecast.Ages()

        def sink(rows):
            cols.add_rows(rows)
            ages.add_rows(rows)
        ctnetlink.dump(sink=sink)               # streamed into the counts: no list of rows
        rules = rules_text()
        # Both tuples of every entry (a second dump) only where NAT rules exist.
        usage = nat_usage() if any(w in rules for w in NAT_WORDS) else None
        sysctls = kstats.timeouts()
        left = window - (time.monotonic() - t1)
        if left > 0:
            time.sleep(left)
        st2 = kstats.read()
        dt = max(time.monotonic() - t1, 1e-6)
    dec = ctnetlink.NetlinkDecoder()
    s = Summary.from_columns(cols, dec)
    size, how = entry_size()
    b = st2.totals
    deltas = counters.row_deltas(st1.cpu, st2.cpu)
    limit, own = st2.max, None
    if scope == "netns":                         # its own value, capped by the initial namespace's
        limit = effective_max(st2.max, global_max)
        own = st2.max if limit != st2.max else None
    h = HostState(netns=netns or "host", count=st2.count, max=limit, buckets=st2.buckets,
                  sysctls=sysctls, stats=b, window=dt,
                  rates={k: v / dt for k, v in deltas.items()}, deltas=deltas,
                  by_state=dict(s.by_state), by_proto_dport=dict(s.by_proto_dport),
                  by_src=dict(s.by_src), rules=rules, total=s.total,
                  kernel=platform.release(), max_scope=scope,
                  max_global=global_max if scope == "netns" and global_max != st2.max else None,
                  max_own=own,
                  nat=usage.to_state() if usage is not None else {},
                  ages=ages.summary(sysctls, addr=lambda raw: dec.addr(raw)[1]),
                  entry_bytes=size, entry_bytes_how=how)
    if names is not None:
        h.containers = {ip: n for ip in h.by_src if (n := names.by_ip.get(ip))}
    return h


class SettingsError(Exception):
    """A bad --sysctl/--sysctls value: the message says which and why."""


def parse_settings(text: str, where: str) -> dict:
    """Conntrack sysctls from text: `sysctl net.netfilter` output
    ("net.netfilter.nf_conntrack_udp_timeout = 30"), or NAME=VALUE / NAME VALUE
    lines with or without the net.netfilter. and nf_conntrack_ prefixes
    (also net.nf_conntrack_max). Unrelated sysctls are skipped; a known one
    with a value that is not a whole number is an error."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line:
            name, _, value = line.partition("=")
        else:
            name, _, value = line.partition(" ")
        name = name.strip().replace("/", ".")
        for prefix in ("proc.sys.", ".proc.sys.", "net.netfilter.", "net."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith("nf_conntrack_"):
            name = name[len("nf_conntrack_"):]
        if name not in SETTINGS:
            continue
        value = value.strip()
        top = SETTING_MAX.get(name, forecast.MAX_TIMEOUT)
        if not _DIGITS.fullmatch(value) or int(value) > top:
            raise SettingsError(f"{where}, line {n}: nf_conntrack_{name} must be a whole number "
                                f"of {'entries' if name in ('max', 'buckets') else 'seconds'} "
                                f"up to {top:,}, not {value[:40]!r}")
        out[name] = int(value)
    return out


def read_export(path: str, settings: dict | None = None, jobs: int | None = None) -> HostState:
    """A table export (tablefile.scan, timeouts counted in the same pass)
    as a doctor.HostState. An export has no rates, kernel counters, rules
    or sysctls: `settings` (parse_settings) gives the host's timeouts and
    limit where known; missing timeouts are the kernel's defaults, listed
    in HostState.assumed. Raises tablefile.InputError."""
    settings = dict(settings or {})
    res, dec = tablefile.scan(path, Filter(), jobs, timed=True)
    name = "standard input" if path == "-" else path
    if res.entries == 0:
        raise tablefile.InputError(
            f"{name}: no conntrack entries found in {res.lines:,} lines ({res.malformed:,} malformed): "
            "expected /proc/net/nf_conntrack or conntrack -L output")
    sysctls = {k: settings.get(k, DEFAULT_TIMEOUTS[k]) for k in TIMEOUTS}
    s = Summary.from_columns(res.cols, dec)
    size, how = entry_size()
    h = HostState(netns="", count=s.total, max=settings.get("max"), buckets=settings.get("buckets"),
                  sysctls=sysctls, by_state=dict(s.by_state), by_proto_dport=dict(s.by_proto_dport),
                  by_src=dict(s.by_src), total=s.total,
                  ages=tablefile.ages_summary(res.ages, dec, sysctls),
                  entry_bytes=size, entry_bytes_how=how + " of this machine's kernel",
                  export=name, assumed=sorted(k for k in TIMEOUTS if k not in settings),
                  malformed=res.malformed, malformed_samples=[list(x) for x in res.samples])
    return h
