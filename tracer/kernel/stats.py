"""The live table's state: fill (count/max), hash buckets and the kernel's
per-CPU counters, for the current network namespace.

Sources, best first: /proc/sys/net/netfilter/* (count, max, buckets; per
namespace) and /proc/net/stat/nf_conntrack (per-CPU counters), with
ctnetlink's stats messages (as `conntrack -S`) where those files are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.core import counters
from tracer.kernel import ctnetlink
from tracer.core.forecast import SCHEDULE_SYSCTLS

SYSCTL = "/proc/sys/net/netfilter/"
STAT_FILE = "/proc/thread-self/net/stat/nf_conntrack"
# /proc/net/stat/nf_conntrack column names -> the names `conntrack -S` uses.
_STAT_ALIASES = {"clashres": "clash_resolve", "chainlength": "chaintoolong",
                 "icmp_error": "error"}


@dataclass
class TableState:
    count: int | None = None
    max: int | None = None
    buckets: int | None = None
    cpu: list[dict[str, int]] = field(default_factory=list)
    stats_source: str = ""

    @property
    def totals(self) -> dict[str, int]:
        return counters.summed(self.cpu)

    def to_dict(self) -> dict:
        return {"count": self.count, "max": self.max, "buckets": self.buckets,
                "fill": (self.count / self.max) if self.count is not None and self.max else None,
                "stats_source": self.stats_source, "stats": self.totals, "per_cpu": self.cpu}


def sysctl(name: str) -> int | None:
    try:
        with open(SYSCTL + name) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def timeouts() -> dict[str, int]:
    """The current namespace's conntrack timeouts, by short sysctl name
    ("udp_timeout": nf_conntrack_udp_timeout), those that exist here."""
    return {k: v for k in SCHEDULE_SYSCTLS if (v := sysctl(f"nf_conntrack_{k}")) is not None}


def parse_stat_file(text: str) -> list[dict[str, int]]:
    """Rows of /proc/net/stat/nf_conntrack (a header, then one hex row per CPU)."""
    lines = text.split("\n")
    names = [_STAT_ALIASES.get(n, n) for n in lines[0].split()]
    rows = []
    for cpu, line in enumerate(l for l in lines[1:] if l.strip()):
        vals = [int(v, 16) for v in line.split()]
        row = {"cpu": cpu}
        row.update((n, v) for n, v in zip(names, vals) if n != "entries")
        rows.append(row)
    return rows


def cpu_stats() -> list[dict[str, int]]:
    """Per-CPU counters of the current namespace (stat file, else ctnetlink)."""
    try:
        with open(STAT_FILE) as f:
            return parse_stat_file(f.read())
    except OSError:
        return ctnetlink.stats_cpu()


def read() -> TableState:
    """The state of the current namespace's table (call inside netns.entered)."""
    st = TableState(count=sysctl("nf_conntrack_count"), max=sysctl("nf_conntrack_max"),
                    buckets=sysctl("nf_conntrack_buckets"))
    try:
        with open(STAT_FILE) as f:
            st.cpu = parse_stat_file(f.read())
        st.stats_source = "/proc/net/stat/nf_conntrack"
    except OSError:
        st.cpu = ctnetlink.stats_cpu()
        st.stats_source = "ctnetlink"
    if st.count is None or st.max is None:
        glob = ctnetlink.stats_global()
        st.count = st.count if st.count is not None else glob.get("count")
        st.max = st.max if st.max is not None else glob.get("max")
    return st
