"""`cttrace doctor`: findings with evidence and the exact commands to fix
them, from a HostState. The rules are pure; reading the host sits in
hoststate.py (live) or comes from a capture file. Nothing here changes the
system.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CRITICAL, WARNING, INFO = "critical", "warning", "info"
TUNNELS = {4789: "VXLAN", 6081: "Geneve"}
ESTABLISHED_DEFAULT = 432000          # 5 days, the kernel's default


@dataclass
class HostState:
    """What the rules look at (all plain data, JSON-able)."""
    netns: str = "host"
    count: int | None = None
    max: int | None = None
    buckets: int | None = None
    sysctls: dict = field(default_factory=dict)         # short name -> int
    stats: dict = field(default_factory=dict)           # kernel counters since boot, summed
    rates: dict = field(default_factory=dict)           # per second over the sampling window
    window: float = 0.0
    by_state: dict = field(default_factory=dict)
    by_proto_dport: dict = field(default_factory=dict)
    by_src: dict = field(default_factory=dict)
    containers: dict = field(default_factory=dict)      # src ip -> name
    rules: str = ""                                     # iptables-save -t raw + nft list ruleset
    total: int = 0                                      # entries in the dump


@dataclass
class Finding:
    id: str
    severity: str
    message: str
    evidence: str
    fix: str

    def to_dict(self) -> dict:
        return asdict(self)


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


def diagnose(h: HostState) -> list[Finding]:
    out: list[Finding] = []
    add = lambda *a: out.append(Finding(*a))  # noqa: E731
    mx, cnt = h.max or 0, h.count or 0
    fill = cnt / mx if mx else 0.0
    new_max = max(mx * 2, 262144)
    raise_fix = (f"sysctl -w net.netfilter.nf_conntrack_max={new_max}\n"
                 f"echo {new_max // 4} > /sys/module/nf_conntrack/parameters/hashsize\n"
                 f"# persist: echo 'net.netfilter.nf_conntrack_max={new_max}' > /etc/sysctl.d/90-conntrack.conf")
    if mx and fill >= 0.9:
        add("table_full", CRITICAL, f"the conntrack table is {100 * fill:.0f}% full",
            f"nf_conntrack_count={cnt} nf_conntrack_max={mx}", raise_fix)
    elif mx and fill >= 0.75:
        add("table_filling", WARNING, f"the conntrack table is {100 * fill:.0f}% full",
            f"nf_conntrack_count={cnt} nf_conntrack_max={mx}", raise_fix)

    drop_rate = h.rates.get("drop", 0.0)
    if drop_rate > 0:
        add("dropping_now", CRITICAL,
            f"new connections are being dropped now: {drop_rate:,.0f}/s (table full)",
            f"kernel drop counter +{drop_rate * h.window:,.0f} in {h.window:.1f} s; {h.stats.get('drop', 0):,} since boot",
            raise_fix + "\n# and find who fills it: cttrace top; cttrace drops --reason table_full")
    elif h.stats.get("drop", 0) > 0:
        add("dropped_before", WARNING,
            f"{h.stats['drop']:,} packets were dropped by a full table since boot (none now)",
            f"kernel drop counter {h.stats['drop']:,}", raise_fix)
    if h.stats.get("early_drop", 0) > 0:
        add("early_drops", WARNING if h.rates.get("early_drop", 0) > 0 else INFO,
            f"{h.stats['early_drop']:,} entries were evicted to make room (early drop)",
            f"kernel early_drop counter {h.stats['early_drop']:,}"
            + (f", {h.rates['early_drop']:,.0f}/s now" if h.rates.get("early_drop") else ""),
            raise_fix)
    if h.stats.get("insert_failed", 0) > 0:
        add("insert_failed", WARNING,
            f"{h.stats['insert_failed']:,} packets were dropped because their entry could not be "
            "inserted (races between simultaneous flows, typically UDP DNS from containers)",
            f"kernel insert_failed counter {h.stats['insert_failed']:,}",
            "# DNS from pods/containers: use TCP or separate sockets for A/AAAA (resolv.conf: "
            "options single-request-reopen), or a node-local DNS cache")

    if mx and h.buckets and mx / h.buckets > 8:
        add("hash_chains", WARNING,
            f"{mx // h.buckets} entries per hash bucket at the limit: lookups walk long chains",
            f"nf_conntrack_max={mx} nf_conntrack_buckets={h.buckets}",
            f"echo {max(mx // 4, h.buckets)} > /sys/module/nf_conntrack/parameters/hashsize")

    total = h.total or 0
    est = h.by_state.get("ESTABLISHED", 0)
    t_est = h.sysctls.get("tcp_timeout_established")
    if total >= 100 and est / total >= 0.5 and t_est and t_est >= ESTABLISHED_DEFAULT:
        add("established_timeout", WARNING,
            f"{100 * est / total:.0f}% of entries are ESTABLISHED and they live {t_est // 86400} days "
            "when idle (kube-proxy uses 1 day)",
            f"{est:,} ESTABLISHED of {total:,}; nf_conntrack_tcp_timeout_established={t_est}",
            "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=86400")
    tw = h.by_state.get("TIME_WAIT", 0)
    t_tw = h.sysctls.get("tcp_timeout_time_wait")
    if total >= 100 and tw / total >= 0.3 and t_tw and t_tw > 30:
        add("time_wait", INFO,
            f"{100 * tw / total:.0f}% of entries are TIME_WAIT (short connections), kept {t_tw} s",
            f"{tw:,} TIME_WAIT of {total:,}; nf_conntrack_tcp_timeout_time_wait={t_tw}",
            "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=30\n"
            "# better: reuse connections (keep-alive, pools) in the busiest clients")

    for port, name in TUNNELS.items():
        n = h.by_proto_dport.get(f"udp/{port}", 0)
        if n and not _notrack(h.rules, port):
            add(f"tracked_{name.lower()}", WARNING,
                f"{name} tunnel traffic (udp/{port}) is tracked: {n:,} entries that need no state",
                f"{n:,} entries with destination port udp/{port}; no NOTRACK rule for it",
                f"iptables -t raw -A PREROUTING -p udp --dport {port} -j CT --notrack\n"
                f"iptables -t raw -A OUTPUT -p udp --dport {port} -j CT --notrack\n"
                f"conntrack -D -p udp --dport {port}\n"
                f"# nftables: nft add table ip raw; nft add chain ip raw pre '{{ type filter hook "
                f"prerouting priority raw; }}'; nft add rule ip raw pre udp dport {port} notrack")

    if total >= 100 and h.by_src:
        src, n = max(h.by_src.items(), key=lambda kv: kv[1])
        if n / total >= 0.3:
            who = h.containers.get(src)
            add("heavy_source", WARNING if n / total >= 0.5 else INFO,
                f"{who or src} holds {100 * n / total:.0f}% of the table",
                f"{n:,} of {total:,} entries have original source {src}" + (f" ({who})" if who else ""),
                f"cttrace top --src {src}/{32 if ':' not in src else 128}   # what it opens\n"
                "# if it is a container on a NATed bridge with heavy traffic: host networking, "
                "connection reuse, or NOTRACK for its traffic")
    return out
