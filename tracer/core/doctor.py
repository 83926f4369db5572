"""`cttrace doctor`: findings with evidence and the exact commands to fix
them, from a HostState. The rules are pure; reading the host sits in
tracer/kernel/host.py (live) or comes from a capture file. Nothing here changes the
system.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from tracer.core import command as cmd
from tracer.core import cuts as who
from tracer.core import forecast as fc
from tracer.core import kversion
from tracer.core.counters import clash_drops, table_full_drops
from tracer.core import nat
from tracer.core.hoststate import HostState

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SEVERITIES = (CRITICAL, WARNING, INFO)       # the order findings are listed in, everywhere
# Tunnels whose outer UDP flows need no state: port -> (name, finding id suffix).
# 8472 is the Linux vxlan driver's historical default, used by flannel and Cilium.
TUNNELS = {4789: ("VXLAN", "vxlan"), 8472: ("VXLAN (Linux's default port: flannel, Cilium)", "vxlan_8472"),
           6081: ("Geneve", "geneve")}
ESTABLISHED_DEFAULT = 432000          # 5 days, the kernel's default


@dataclass
class Finding:
    id: str
    severity: str
    message: str
    evidence: str
    fix: str
    # who the fix cuts, by application (tracer/core/cuts.py; docs/json.md)
    cuts: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def by_severity(findings: list) -> list:
    """Critical first, then warning, then info; in the order the rules made
    them within a severity (a stable sort). Findings may be Finding objects
    or their dicts (a report's)."""
    def rank(f):
        sev = f.get("severity") if isinstance(f, dict) else f.severity
        return SEVERITIES.index(sev) if sev in SEVERITIES else len(SEVERITIES)
    return sorted(findings, key=rank)


def _notrack(rules: str, port: int) -> bool:
    """Is there a raw-table NOTRACK (iptables CT --notrack / NOTRACK, or
    nftables notrack) for udp dport `port`?"""
    p = str(port)
    for line in rules.splitlines():
        low = line.lower()
        if p not in low:
            continue
        if ("--notrack" in low or "-j notrack" in low) and ("--dport " + p in low or "dport " + p in low):
            return True
        if "notrack" in low and ("udp dport " + p in low or "dport " + p in low):
            return True
    return False


@dataclass(frozen=True)
class Context:
    """What several rules need, computed once from a HostState."""
    h: HostState
    fill: float          # count / max (0 without a limit)
    new_max: int         # the limit the fixes propose
    raise_fix: str       # the commands that raise it, where this kernel sets it
    clash_now: int       # clash drops over the window (tracer/core/counters.py) ...
    clash_all: int       # ... and since boot


def context(h: HostState) -> Context:
    mx, cnt = h.max or 0, h.count or 0
    new_max = max(mx * 2, 262144)
    raise_fix = (f"sysctl -w net.netfilter.nf_conntrack_max={new_max}\n"
                 f"echo {new_max // 4} > /sys/module/nf_conntrack/parameters/hashsize\n"
                 f"# persist: echo 'net.netfilter.nf_conntrack_max={new_max}' > /etc/sysctl.d/90-conntrack.conf")
    if h.max_scope in ("global", "global-writable") and h.netns != "host":
        raise_fix += ("\n# the limit is global on this kernel: run these on the host, not in the namespace;"
                      "\n# every namespace may then hold that many entries (each counts its own)")
        if h.max_scope == "global-writable":
            raise_fix += ("\n# this kernel lets a namespace write nf_conntrack_max, but that changes the "
                          "global value (fixed in 5.10.35 and 5.13)")
    elif h.max_scope == "netns":
        raise_fix += "\n# this namespace has its own limit: run the sysctl inside it (nsenter -n -t PID)"
        if h.max_global and new_max > h.max_global:
            raise_fix += (f"\n# it is capped by the initial namespace's {h.max_global:,}: raise that on "
                          "the host too")
    return Context(h=h, fill=cnt / mx if mx else 0.0, new_max=new_max, raise_fix=raise_fix,
                   clash_now=clash_drops(_window_deltas(h)), clash_all=clash_drops(h.stats))


def _fill(c: Context) -> Iterator[Finding]:
    h = c.h
    mx = h.max or 0
    limit = f"nf_conntrack_count={h.count or 0} nf_conntrack_max={mx}" + scope_note(h)
    if mx and c.fill >= 0.9:
        yield Finding("table_full", CRITICAL, f"the conntrack table is {100 * c.fill:.0f}% full", limit,
                      c.raise_fix)
    elif mx and c.fill >= 0.75:
        yield Finding("table_filling", WARNING, f"the conntrack table is {100 * c.fill:.0f}% full", limit,
                      c.raise_fix)


def _hash_chains(c: Context) -> Iterator[Finding]:
    h = c.h
    mx = h.max or 0
    if mx and h.buckets and mx / h.buckets > 8:
        yield Finding("hash_chains", WARNING,
                      f"{mx // h.buckets} entries per hash bucket at the limit: lookups walk long chains",
                      f"nf_conntrack_max={mx} nf_conntrack_buckets={h.buckets}",
                      f"echo {max(mx // 4, h.buckets)} > /sys/module/nf_conntrack/parameters/hashsize")


def _timeouts(c: Context) -> Iterator[Finding]:
    """TCP states whose timeouts keep the table full: ESTABLISHED, TIME_WAIT."""
    h = c.h
    total = h.total or 0
    est = h.by_state.get("ESTABLISHED", 0)
    t_est = h.sysctls.get("tcp_timeout_established")
    if total >= 100 and est / total >= 0.5 and t_est and t_est >= ESTABLISHED_DEFAULT:
        yield Finding(
            "established_timeout", WARNING,
            f"{100 * est / total:.0f}% of entries are ESTABLISHED and they live {t_est // 86400} days "
            "when idle (kube-proxy uses 1 day)",
            f"{est:,} ESTABLISHED of {total:,}; nf_conntrack_tcp_timeout_established={t_est}"
            + (" (assumed: the kernel's default; an export carries no sysctls)"
               if "tcp_timeout_established" in h.assumed else ""),
            "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=86400")
    tw = h.by_state.get("TIME_WAIT", 0)
    t_tw = h.sysctls.get("tcp_timeout_time_wait")
    if total >= 100 and tw / total >= 0.3 and t_tw and t_tw > 30:
        yield Finding(
            "time_wait", INFO,
            f"{100 * tw / total:.0f}% of entries are TIME_WAIT (short connections), kept {t_tw} s",
            f"{tw:,} TIME_WAIT of {total:,}; nf_conntrack_tcp_timeout_time_wait={t_tw}",
            "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=30\n"
            "# better: reuse connections (keep-alive, pools) in the busiest clients")


def _tunnels(c: Context) -> Iterator[Finding]:
    """Tunnel traffic (VXLAN, Geneve) tracked without need."""
    h = c.h
    total = h.total or 0
    for port, (name, tag) in TUNNELS.items():
        n = h.by_proto_dport.get(f"udp/{port}", 0)
        if n and not _notrack(h.rules, port):
            after = f"; without them {total - n:,} of {total:,} entries stay" if h.export and total else ""
            if h.ages and h.max and total and not h.export:
                # the tunnel's share of the table (and of the inserts) goes away
                keep = 1 - n / total
                f = table_forecast(h, h.max, scale=keep)
                after = (f"; without them {total - n:,} of {total:,} entries stay"
                         + (f", {fc.text(f)}" if f.get("filling") is not None else ""))
            cut = [g for g in (h.ages or {}).get("apps", []) if g.get("app") == f"udp/{port}"]
            yield Finding(
                f"tracked_{tag}", WARNING,
                f"{name} tunnel traffic (udp/{port}) is tracked: {n:,} entries that need no state",
                f"{n:,} entries with destination port udp/{port}; "
                + ("an export holds only tracked entries" if h.export else "no NOTRACK rule for it") + after
                + ("; who NOTRACK stops tracking: below" if cut else ""),
                f"iptables -t raw -A PREROUTING -p udp --dport {port} -j CT --notrack\n"
                f"iptables -t raw -A OUTPUT -p udp --dport {port} -j CT --notrack\n"
                f"conntrack -D -p udp --dport {port}\n"
                f"# nftables: nft add table ip raw; nft add chain ip raw pre '{{ type filter hook "
                f"prerouting priority raw; }}'; nft add rule ip raw pre udp dport {port} notrack", cut)


def _heavy_source(c: Context) -> Iterator[Finding]:
    h = c.h
    total = h.total or 0
    if total >= 100 and h.by_src:
        src, n = max(h.by_src.items(), key=lambda kv: kv[1])
        if n / total >= 0.3:
            name = h.containers.get(src)
            cut = (h.ages or {}).get("source_apps", {}).get(src, [])
            yield Finding(
                "heavy_source", WARNING if n / total >= 0.5 else INFO,
                f"{name or src} holds {100 * n / total:.0f}% of the table",
                f"{n:,} of {total:,} entries have original source {src}" + (f" ({name})" if name else "")
                + ("; its applications: below" if cut else ""),
                _top_src(src) + "   # what it opens\n"
                "# if it is a container on a NATed bridge with heavy traffic: host networking, "
                "connection reuse, or NOTRACK for its traffic", cut)


def _top_src(src) -> str:
    """`cttrace top --src ADDR/32` for a parsed address, else why not."""
    try:
        a = cmd.address(src, "source")
    except cmd.Unsafe as e:
        return cmd.no_command(str(e), "cttrace top --src")
    return cmd.join(["cttrace", "top", "--src", f"{a}/{a.max_prefixlen}"])


# A conntrack sysctl's short name (udp_timeout, tcp_timeout_established, ...).
_SYSCTL = re.compile(r"[a-z][a-z0-9_]{0,63}")


def sysctl_fix(name, value) -> str:
    """`sysctl -w net.netfilter.nf_conntrack_NAME=VALUE` from a validated
    name and a whole number, else why not."""
    try:
        if not isinstance(name, str) or not _SYSCTL.fullmatch(name):
            raise cmd.Unsafe(f"the setting {cmd.comment(name)[:60]!r} is not a sysctl name")
        v = cmd.integer(value, 0, 2**31 - 1, "value")
    except cmd.Unsafe as e:
        return cmd.no_command(str(e), "sysctl -w")
    return cmd.join(["sysctl", "-w", f"net.netfilter.nf_conntrack_{name}={v}"])


def table_forecast(h: HostState, limit: int | None, scale: float = 1.0) -> dict:
    """Time to full of h's table against `limit` (forecast.forecast): the
    entries' remaining timeouts from the dump, the kernel's insert counter
    over the window (Poisson band), new entries living the timeout of the
    kind the youngest entries hold. `scale` keeps that share of entries and
    inserts (a NOTRACK rule removing the rest)."""
    a = h.ages or {}
    ins = inserts(h)
    band = fc.rate_band(None, count=ins * scale, seconds=h.window) if h.window else (0.0, 0.0, 0.0)
    # The dump was read at the window's start (live; a capture says when),
    # the count at its end: the remaining timeouts are that much older, and
    # the entries made since (count - dumped) are new ones, half of it old
    # on average.
    life = a.get("life")
    w = (h.window or 0.0) if h.dump_lag is None else h.dump_lag
    existing = [(t - w, n * scale) for t, n in fc.flat(a.get("remaining", {})) if t > w]
    made = max((h.count or 0) - a.get("total", 0), 0) * scale
    fixed = 0
    if life:
        existing = sorted(existing + [(life - w / 2, made)])
    else:
        fixed = made
    return fc.forecast(existing, limit, band, life, fixed)


def inserts(h: HostState) -> int:
    """New entries over the window: the kernel's insert counter where it
    counts (recent kernels leave it at 0), else the count's growth plus the
    dumped entries whose timeout ended within the window."""
    n = _delta(h, "insert")
    if n or not h.ages:
        return n
    if h.inserts_seen is not None:              # a capture: its insert events
        return h.inserts_seen
    w = h.window or 0.0
    expired = sum(n for t, n in fc.flat(h.ages.get("remaining", {})) if t <= w)
    return max((h.count or 0) - h.ages.get("total", 0), 0) + expired


def _forecast(c: Context) -> Iterator[Finding]:
    """Time to full, what a shorter timeout or a higher limit would do, and
    whether early drop can make room (from the entries' remaining timeouts)."""
    h, raise_fix = c.h, c.raise_fix
    a = h.ages
    if not a or not (h.max or h.export):
        return
    if h.export:
        yield from _export(h, c.new_max)
    else:
        yield from _time_to_full(h, c.new_max, raise_fix)
    total, mx, cnt = a.get("total", 0), h.max or 0, h.count or 0
    # shorter timeouts: what they would free now, and whose entries those are
    if total >= 100:
        best: dict = {}
        for c in a.get("candidates", []):
            if c["freed"] >= max(1, total // 20):
                best.setdefault(c["sysctl"], c)       # the gentlest value that frees 5% or more
        for name, c in best.items():
            idle = "; ".join((f"{k}: " if len(c["kinds"]) > 1 else "") + ", ".join(f"{lab} {n:,}" for lab, n in a["idle"][k]["buckets"].items() if n)
                             for k in c["kinds"] if k in a.get("idle", {}))
            cut = c.get("cuts") or []
            apps = ", ".join(f"{x['src']} -> {x['dport']} {x['entries']:,}" for x in c.get("by_app", []))
            assumed = (f" (nf_conntrack_{name}={c['current']:,} assumed: the kernel's default; an export "
                       "carries no sysctls, give the host's with --sysctls)" if name in h.assumed else "")
            yield Finding(f"shorter_{name}", INFO,
                f"nf_conntrack_{name}={c['proposed']:,} (now {c['current']:,}) would free "
                f"{c['freed']:,} entries now ({100 * c['freed'] / total:.0f}% of the table)",
                f"idle time of {', '.join(c['kinds'])} (timeout - remaining): {idle}"
                + (f"; idle {c['proposed']:,} s or more: {who.summary(cut)} (who it cuts: below)" if cut else
                   f"; idle {c['proposed']:,} s or more, by source -> destination port: {apps}" if apps else "")
                + assumed,
                sysctl_fix(name, c["proposed"]) + "\n"
                f"# it cuts flows idle longer than {c['proposed']} s: the applications above must "
                "send within that time (keep-alives) or reconnect", cut)
    # early drop only evicts entries that are not ASSURED
    share = a.get("assured", 0) / total if total else 0.0
    why = (f"{a.get('assured', 0):,} of {total:,} entries are ASSURED; the kernel evicts only entries "
           "that are not (early_drop, nf_conntrack_core.c), so new flows are dropped instead")
    if mx and cnt >= 0.9 * mx and total and share >= 0.9:
        yield Finding("early_drop_blocked", WARNING,
            f"early drop cannot make room: {100 * share:.0f}% of entries are ASSURED", why, raise_fix)
    elif h.export and total >= 100 and share >= 0.9:
        yield Finding("early_drop_blocked", INFO,
            f"if this table fills, early drop cannot make room: {100 * share:.0f}% of entries are ASSURED",
            why + (" once it is full" if not mx else f"; it is {100 * cnt / mx:.0f}% full now"), raise_fix)


def _time_to_full(h: HostState, new_max: int, raise_fix: str) -> Iterator[Finding]:
    """time_to_full / not_filling from the live (or captured) rates."""
    a = h.ages
    total, mx, cnt = a.get("total", 0), h.max, h.count or 0
    f = table_forecast(h, mx)
    ins = inserts(h)
    sched = a.get("schedule", {})
    soon = {lab: sum(d.get(lab, 0) for d in sched.values()) for lab, _ in fc.HORIZONS}
    life = a.get("life")
    new = a.get("new_kind")
    sysctl = a.get("idle", {}).get(new, {}).get("sysctl") if new else None
    model = (f"new entries +{ins:,} in {h.window:.1f} s ({f['rate']:,.1f}/s, band {f['rate_low']:,.1f}-"
             f"{f['rate_high']:,.1f}/s); nf_conntrack_count={cnt:,} nf_conntrack_max={mx:,}{scope_note(h)}; expiring "
             f"unless refreshed: {soon['10s']:,} in 10 s, {soon['1m']:,} in 1 min, {soon['10m']:,} in "
             f"10 min; new entries are {new or 'unknown'}"
             + (f" and live {life:,} s (nf_conntrack_{sysctl})" if life else "")
             + "; refreshed entries live longer than this model says")
    cost = ""
    if h.entry_bytes:
        more = max(new_max - mx, 0)
        after = fc.text(table_forecast(h, new_max)) or "unknown"
        cost = (f"; nf_conntrack_max={new_max:,} costs {more * h.entry_bytes / 2**20:,.1f} MiB more at "
                f"{h.entry_bytes} bytes per entry ({h.entry_bytes_how}; extensions such as NAT are a "
                f"separate allocation) plus 8 bytes per hash bucket, and then: {after}")
    if f.get("filling"):
        s = f["seconds"]
        sev = CRITICAL if s <= 600 else WARNING if s <= 86400 else INFO
        yield Finding("time_to_full", sev, f"the conntrack table will be {fc.text(f)} at the current insert rate",
            model + cost, raise_fix + "\n# and find who fills it: cttrace top")
    elif f.get("filling") is False and total >= 100:
        lvl = f" at ~{f['steady']:,} of {mx:,}" if f.get("steady") is not None else ""
        yield Finding("not_filling", INFO, f"the conntrack table is not filling: at this rate it levels{lvl}"
            + (f" (full in ~{fc.human(f['low'])} at the band's high rate)" if f.get("low") is not None else ""),
            model, "# nothing to do now; `cttrace top` shows the forecast live")


def _export(h: HostState, new_max: int) -> Iterator[Finding]:
    """What an export tells about expiry and memory, and what it cannot tell."""
    a = h.ages
    total = a.get("total", 0)
    sched = a.get("schedule", {})
    soon = {lab: sum(d.get(lab, 0) for d in sched.values()) for lab, _ in fc.HORIZONS}
    mx = h.max
    if h.entry_bytes:
        if mx:
            more = max(new_max - mx, 0)
            cost = (f"nf_conntrack_max={new_max:,} (now {mx:,}) costs {more * h.entry_bytes / 2**20:,.1f} MiB "
                    f"more")
        else:
            cost = f"each 100,000 entries of nf_conntrack_max cost {1e5 * h.entry_bytes / 2**20:,.1f} MiB"
        cost = (f"; a higher limit: {cost} at {h.entry_bytes} bytes per entry ({h.entry_bytes_how}; the "
                "exporting host's kernel may differ; extensions such as NAT are a separate allocation) "
                "plus 8 bytes per hash bucket")
    else:
        cost = ""
    used = sorted({d["sysctl"] for d in a.get("idle", {}).values()})   # the table's kinds
    given = [k for k in used if k not in h.assumed]
    assumed = [k for k in used if k in h.assumed]
    timeouts = "; ".join(x for x in (
        ("given: " + ", ".join(f"{k}={h.sysctls[k]:,}" for k in given)) if given else "",
        ("assumed, the kernel's defaults: " + ", ".join(f"{k}={h.sysctls[k]:,}" for k in assumed))
        if assumed else "") if x) or "none needed"
    yield Finding("export_no_rates", INFO,
        "a table export has no rates: how soon the table fills cannot be told from it",
        f"{total:,} entries with a timeout in {h.export}"
        + (f" ({h.count - total:,} more without one: offloaded)" if (h.count or 0) > total else "")
        + f"; expiring unless refreshed: {soon['10s']:,} in 10 s, {soon['1m']:,} in 1 min, "
        f"{soon['10m']:,} in 10 min; "
        + (f"nf_conntrack_max={mx:,} ({100 * (h.count or 0) / mx:.0f}% full)" if mx else
           "the limit is not known (nf_conntrack_max: give it with --sysctls or --sysctl max=N)")
        + f"{cost}; not in an export: insert and delete rates (time to full), the kernel's drop, "
        f"early-drop and insert-failure counters, the host's rules (NOTRACK, NAT) and sysctls (timeouts "
        f"{timeouts})"
        + (f"; {h.malformed:,} lines were not entries and were skipped" if h.malformed else ""),
        "# on the exporting host: rates, time to full, drops, rules\n"
        "sudo cttrace doctor\n"
        "sudo cttrace capture --duration 60s -o host.ctcap   # for cttrace report\n"
        "# its settings, for: cttrace doctor --file EXPORT --sysctls sysctls.txt\n"
        "sysctl net.netfilter > sysctls.txt")
    # remaining timeouts longer than the timeout said (or assumed): a wrong timeout
    wrong = []
    for k, d in a.get("idle", {}).items():
        rem = a.get("remaining", {}).get(k, {})
        top = max((int(t) for t in rem), default=0)
        n = sum(rem.values())
        if top > d["timeout"]:
            wrong.append(f"{k}: up to {top:,} s left, more than nf_conntrack_{d['sysctl']}={d['timeout']:,}"
                         + (" (assumed)" if d["sysctl"] in h.assumed else ""))
        elif d["sysctl"] in h.assumed and n >= 10 and d["timeout"] - top >= 3600:
            # long timeouts: some of many entries were busy a moment ago, unless
            # the host's timeout is shorter than the default
            wrong.append(f"{k}: at most {top:,} s left of the assumed {d['timeout']:,} (the kernel's "
                         f"default): either every entry has been idle {d['timeout'] - top:,} s or more, "
                         "or the host uses a shorter timeout"
                         + (" (kube-proxy sets 86400)" if d["sysctl"] == "tcp_timeout_established" else ""))
    if wrong:
        yield Finding("export_timeouts", WARNING,
            "the export's remaining timeouts do not fit the timeouts "
            + ("assumed" if h.assumed else "given") + ": idle times of these kinds are unreliable",
            "; ".join(wrong) + " (also seen where entries have a timeout policy of their own, "
            "iptables CT --timeout / nft ct timeout, or the sysctl changed after their last packet)",
            "sysctl net.netfilter > sysctls.txt     # on the exporting host\n"
            + cmd.join(["cttrace", "doctor", "--file", _export_arg(h.export), "--sysctls", "sysctls.txt"]))


def _export_arg(name: str) -> str:
    """The export's file name as one argument; EXPORT where it is standard
    input or holds a control character (a newline would split the line)."""
    if name == "standard input" or cmd.has_control(name):
        return "EXPORT"
    return name


def scope_note(h: HostState) -> str:
    """What the evidence says of the limit's scope ("" in the host's own namespace)."""
    if h.max_scope == "netns":
        if h.max_own:
            return (f" (this namespace's own setting is {h.max_own:,}, capped by the initial "
                    f"namespace's {h.max_global or h.max:,})")
        return (f" (this namespace's own limit; the initial namespace's is {h.max_global:,})"
                if h.max_global else " (this namespace's own limit)")
    if h.max_scope in ("global", "global-writable") and h.netns != "host":
        return (" (the limit is global on this kernel: one value for every namespace, set in the "
                "initial one; each namespace's own count is checked against it)")
    return ""


def _delta(h: HostState, name: str) -> int:
    """Exact increase of a kernel counter over the window (older states: from the rate)."""
    if name in h.deltas:
        return int(h.deltas[name])
    return int(round(h.rates.get(name, 0.0) * h.window))


def _window_deltas(h: HostState) -> dict:
    """The drop counters' increases over the window."""
    return {k: _delta(h, k) for k in ("drop", "insert_failed", "chaintoolong", "early_drop", "invalid")}


def _drops(c: Context) -> Iterator[Finding]:
    """Drops now and since boot, split by what the kernel's counters say
    (clashes are _nat's)."""
    h, raise_fix = c.h, c.raise_fix
    now = _window_deltas(h)
    w = h.window

    def per_s(n: int) -> float:
        return n / w if w else 0.0
    other_now, other_all = table_full_drops(now), table_full_drops(h.stats)
    split = (f"kernel drop +{now['drop']:,} and insert_failed +{now['insert_failed']:,} in {w:.1f} s "
             f"(a clash at insert counts in both)")
    # A full table is seen as such: entries at (or next to) the limit, or
    # entries being evicted to make room (early_drop happens only when full).
    fill = max(c.fill, h.peak_fill or 0.0)           # a capture: its fullest sample
    full = fill >= 0.9 or now["early_drop"] > 0
    if other_now > 0 and full:
        yield Finding("dropping_now", CRITICAL,
            f"new connections are being dropped now: {per_s(other_now):,.0f}/s (table full)",
            f"{split}: {other_now:,} refused with the table {100 * fill:.0f}% full; "
            f"{table_full_drops(h.stats):,} such drops since boot",
            raise_fix + "\n# and find who fills it: cttrace top; cttrace drops --reason table_full")
    elif other_now > 0:
        yield Finding("conntrack_drops", WARNING,
            f"conntrack dropped {other_now:,} packets in {w:.1f} s with room in the table "
            f"({100 * fill:.0f}% full): not table full",
            f"{split}; invalid +{now['invalid']:,}; a drop with room in the table is a protocol "
            "tracker's verdict (counted with invalid) or a failed allocation",
            "cttrace drops --reason invalid      # which packets, from whom\n"
            "sysctl -w net.netfilter.nf_conntrack_log_invalid=255   # the kernel logs why (dmesg)")
    elif other_all > 0:
        yield Finding("dropped_before", WARNING,
            f"{other_all:,} packets were dropped by conntrack since boot that were not insert "
            "clashes (a full table or a tracker's verdict; none now)",
            f"kernel drop counter {h.stats.get('drop', 0):,}, insert_failed "
            f"{h.stats.get('insert_failed', 0):,}, chaintoolong {h.stats.get('chaintoolong', 0):,}"
            + ("" if "clash_resolve" in h.stats else
               "; this kernel has no clash_resolve counter: its insert_failed also counts clashes "
               "resolved without a drop, so this is a lower bound"),
            raise_fix)
    if h.stats.get("early_drop", 0) > 0:
        yield Finding("early_drops", WARNING if now["early_drop"] > 0 else INFO,
            f"{h.stats['early_drop']:,} entries were evicted to make room (early drop)",
            f"kernel early_drop counter {h.stats['early_drop']:,}"
            + (f", +{now['early_drop']:,} in {w:.1f} s" if now["early_drop"] else ""),
            raise_fix)


def _nat(c: Context) -> Iterator[Finding]:
    """SNAT port exhaustion and the UDP DNS race, from the table's NAT
    (reply tuples), the rules' port ranges and the clash counters."""
    h, clash_now, clash_all = c.h, c.clash_now, c.clash_all
    w = h.window
    rules = nat.parse_rules(h.rules or "")
    rows = []
    for u in h.nat.get("snat", []):
        (lo, hi), rule = nat.pick_range(rules, u["proto"], u["snat"], (u["port_min"], u["port_max"]),
                                        u.get("orig_sport_min", 1024))
        rows.append((u, lo, hi, rule, u["entries"] / (hi - lo + 1)))
    rows.sort(key=lambda r: -r[4])
    full = [r for r in rows if r[4] >= 0.9]
    failures = (f"kernel insert_failed +{_delta(h, 'insert_failed'):,} "
                f"in {w:.1f} s ({clash_now:,} dropped as clashes), "
                f"{h.stats.get('insert_failed', 0):,} since boot")
    explained = False
    if full:
        u0, lo0, hi0, _, _ = full[0]
        explained = clash_all > 0
        lines = []
        for u, lo, hi, rule, ratio in full[:5]:
            lines.append(f"{u['proto']} {u['snat']} -> {u['dst']}:{u['dport']}: {u['entries']:,} of "
                         f"{hi - lo + 1:,} ports in use ({lo}-{hi}"
                         + (f", from: {rule.text}" if rule is not None and rule.ports else
                            ", the kernel's default range" if rule is None or rule.ports is None else "")
                         + ")")
        sev = CRITICAL if clash_now > 0 else WARNING
        what = (f"{clash_now:,} new connections failed in {w:.1f} s" if clash_now else
                f"{clash_all:,} insert failures since boot" if clash_all else "no failure yet")
        yield Finding("snat_port_exhaustion", sev,
            f"SNAT port exhaustion: {u0['snat']} has {u0['entries']:,} of {hi0 - lo0 + 1:,} ports "
            f"in use to {u0['dst']}:{u0['dport']}/{u0['proto']} ({what})",
            "; ".join(lines) + f"; {failures}. A port is taken when its reply tuple (destination, "
            "port -> SNAT address, port) is in the table; the kernel tries at most 128+64+32+16 "
            "ports, so a mostly used range fails before it is full",
            _snat_fix(rules, full))
    dns = [d for d in h.nat.get("dnat", []) if d["proto"] == "udp" and d["port"] == 53]
    # a capture's drop events name the clashes' destinations (the sender's tuple)
    seen = {k: n for k, n in h.insert_failed_by_dst.items()
            if k.startswith("udp ") and k.endswith(":53")}
    if seen and not dns:
        dns = [{"proto": "udp", "service": k[4:].rsplit(":", 1)[0], "port": 53, "entries": 0,
                "backends": {}} for k in sorted(seen, key=lambda k: -seen[k])]
    if dns and (clash_all > 0 or seen):
        kv = kversion.parse(h.kernel)
        svc = "; ".join((f"{d['service']}:53 -> " + ", ".join(f"{b} ({n:,})" for b, n in
                                                             list(d["backends"].items())[:4])
                         + f", {d['entries']:,} entries") if d["entries"] else
                        f"{d['service']}:53 (no entry of it in the table now)" for d in dns[:3])
        resolved = _delta(h, "clash_resolve")
        yield Finding("dns_race", CRITICAL if clash_now > 0 else WARNING,
            f"DNS lookups through a DNAT'd service ({dns[0]['service']}:53/udp) meet insert "
            "failures: the conntrack race of UDP DNS" + (" (and SNAT port exhaustion, above)" if full else ""),
            f"{svc}; {failures}; "
            + (f"{sum(seen.values()):,} of {sum(h.insert_failed_by_dst.values()):,} insert-failed drops "
               "recorded went to udp/53 (" + ", ".join(f"{k[4:]}: {n:,}" for k, n in seen.items())
               + "); " if seen else "")
            + f"clash_resolve +{resolved:,} in {w:.1f} s, "
            f"{h.stats.get('clash_resolve', 0):,} since boot (clashes the kernel settled without a "
            f"drop); {_dns_kernel(kv)}",
            _dns_fix(kv, _dns_rules(rules, h.nat.get("snat", []), dns)))
        explained = True
    if clash_all > 0 and not explained:
        yield Finding("insert_failed", CRITICAL if clash_now > 0 else WARNING,
            f"{clash_all:,} packets were dropped because their entry clashed at insert "
            "(two new flows with the same tuple after NAT)",
            failures + (f"; {h.nat.get('snat_entries', 0):,} SNAT'd entries, the fullest "
                        f"{rows[0][0]['entries']:,} of {rows[0][2] - rows[0][1] + 1:,} ports"
                        if rows else ""),
            "# concurrent new flows that NAT maps to one tuple: fully random ports\n"
            + "".join(nat.widened(r) + "\n" for r in [r for r in rules if not r.random_fully][:5])
            + "# DNS from pods/containers: TCP (resolv.conf: options use-vc) or a node-local DNS cache")


def _snat_fix(rules, full) -> str:
    out = []
    used = []
    for u, lo, hi, rule, _ in full:
        if rule is not None and rule not in used:
            used.append(rule)
    for r in used:
        out.append(f"# {cmd.comment(r.text)}" if r.tool != "nft" else f"# nft: {cmd.comment(r.text)}")
        out.append(nat.widened(r))
    if not used:
        out.append("# no SNAT/MASQUERADE rule found in this namespace's rules; on the rule that "
                   "translates these flows: --random-fully and --to-ports 1024-65535")
    u = full[0][0]
    try:
        first = str(cmd.address(u["snat"], "SNAT address"))
    except cmd.Unsafe:
        first = "<first address>"
    out.append(f"# more SNAT addresses: each one has its own ports per destination, e.g. "
               f"-j SNAT --to-source {first}-<last address> --random-fully")
    out.append("# fewer new flows: connection reuse / keep-alive in the clients that open "
               + cmd.comment(f"{u['proto']} flows to {u['dst']}:{u['dport']}"))
    return "\n".join(out)


def _dns_kernel(kv) -> str:
    if kv is None:
        return "kernel version unknown"
    v = f"{kv[0]}.{kv[1]}"
    if kv >= (5, 6):
        return (f"kernel {v}: the same-socket A/AAAA race is settled by the kernel (5.0: same backend, "
                "5.6: different backends), so these failures are concurrent flows from different "
                "sockets that SNAT mapped to one port")
    if kv >= (5, 0):
        return (f"kernel {v}: same-socket queries to one backend are settled by the kernel; to "
                "different backends (5.6) they are not")
    return f"kernel {v}: no clash resolution for the same-socket A/AAAA race (5.0, 5.6)"


def _dns_rules(rules, snat, dns) -> list:
    """The SNAT rules that translate flows to the DNS services' backends."""
    backends = {b.rsplit(":", 1)[0].strip("[]") for d in dns for b in d["backends"]}
    out = []
    for u in snat:
        if u["proto"] == "udp" and u["dport"] == 53 and u["dst"] in backends:
            rule = nat.pick_range(rules, "udp", u["snat"], (u["port_min"], u["port_max"]),
                                  u.get("orig_sport_min", 1024))[1]
            if rule is not None and rule not in out:
                out.append(rule)
    return out


def _dns_fix(kv, rules) -> str:
    out = ["# DNS over TCP: no UDP clash (pod spec: dnsConfig: {options: [{name: use-vc}]})",
           "echo 'options use-vc' >> /etc/resolv.conf",
           "# or NodeLocal DNSCache: pods ask a cache on the node (untracked), which asks "
           "CoreDNS over TCP"]
    masq = [r for r in rules if not r.random_fully]
    if masq:
        out.append("# different sockets racing for one SNAT port: fully random port selection")
        out += [nat.widened(r) for r in masq]
    if kv is None or kv < (5, 6):
        out.append("# this kernel does not settle the same-socket race: send A and AAAA from "
                   "separate sockets")
        out.append("echo 'options single-request-reopen' >> /etc/resolv.conf")
    else:
        out.append("# options single-request-reopen is not needed here: this kernel settles the "
                   "same-socket race itself")
    return "\n".join(out)


class Rule(NamedTuple):
    family: str                         # what it looks at
    ids: tuple[str, ...]                # the finding ids it may give (fnmatch patterns; docs/doctor.md)
    check: Callable[[Context], Iterable[Finding]]


# The rules, in the order their findings are listed within a severity.
RULES: tuple[Rule, ...] = (
    Rule("table fill", ("table_full", "table_filling"), _fill),
    Rule("forecast", ("time_to_full", "not_filling", "export_no_rates", "export_timeouts", "shorter_*",
                      "early_drop_blocked"), _forecast),
    Rule("drops", ("dropping_now", "conntrack_drops", "dropped_before", "early_drops"), _drops),
    Rule("nat", ("snat_port_exhaustion", "dns_race", "insert_failed"), _nat),
    Rule("hash chains", ("hash_chains",), _hash_chains),
    Rule("tcp timeouts", ("established_timeout", "time_wait"), _timeouts),
    Rule("tunnels", ("tracked_*",), _tunnels),
    Rule("heavy source", ("heavy_source",), _heavy_source),
)


def diagnose(h: HostState) -> list[Finding]:
    """The findings for h, critical first (by_severity)."""
    c = context(h)
    return by_severity([f for rule in RULES for f in rule.check(c)])
