"""Read a live host into a doctor.HostState (the edge of `cttrace doctor`)."""

from __future__ import annotations

import shutil
import subprocess
import time

from tracer import ctnetlink, table
from tracer import netns as ns
from tracer.doctor import HostState
from tracer.snapshot import Columns, Summary

TIMEOUTS = ("tcp_timeout_established", "tcp_timeout_time_wait", "tcp_timeout_syn_sent",
            "tcp_timeout_close_wait", "udp_timeout", "udp_timeout_stream", "icmp_timeout",
            "generic_timeout")


def _sysctl(name: str) -> int | None:
    try:
        with open(f"/proc/sys/net/netfilter/nf_conntrack_{name}") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def rules_text() -> str:
    """The raw-table rules of the current namespace (iptables nft and legacy, nftables)."""
    out = []
    for cmd in (["iptables-save", "-t", "raw"], ["iptables-legacy-save", "-t", "raw"],
                ["ip6tables-save", "-t", "raw"], ["nft", "list", "ruleset"]):
        if shutil.which(cmd[0]):
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                out.append(r.stdout)
            except (OSError, subprocess.TimeoutExpired):
                pass
    return "\n".join(out)


def read_live(netns: str | None = None, window: float = 1.0, names=None) -> HostState:
    with ns.entered(netns):
        st1 = table.read()
        t1 = time.monotonic()
        cols = Columns()
        ctnetlink.dump(sink=cols.add_rows)      # streamed into the counts: no list of rows
        rules = rules_text()
        sysctls = {k: v for k in TIMEOUTS if (v := _sysctl(k)) is not None}
        left = window - (time.monotonic() - t1)
        if left > 0:
            time.sleep(left)
        st2 = table.read()
        dt = max(time.monotonic() - t1, 1e-6)
    s = Summary.from_columns(cols, ctnetlink.NetlinkDecoder())
    a, b = st1.totals, st2.totals
    h = HostState(netns=netns or "host", count=st2.count, max=st2.max, buckets=st2.buckets,
                  sysctls=sysctls, stats=b, window=dt,
                  rates={k: max(b.get(k, 0) - a.get(k, 0), 0) / dt for k in b},
                  by_state=dict(s.by_state), by_proto_dport=dict(s.by_proto_dport),
                  by_src=dict(s.by_src), rules=rules, total=s.total)
    if names is not None:
        h.containers = {ip: n for ip in h.by_src if (n := names.by_ip.get(ip))}
    return h
