"""HostState: the one record of a host's conntrack state that the doctor's
rules, the report and a capture read. Filled live by tracer/kernel/host.py,
from an export by tracer/formats/export.py, from a capture by
tracer/formats/capture.py."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    rules: str = ""                                     # iptables-save -t raw/-t nat + nft -a list ruleset
    total: int = 0                                      # entries in the dump
    # Added later (captures without them still load: the defaults mean "not recorded").
    deltas: dict = field(default_factory=dict)          # exact counter increases over the window
    kernel: str = ""                                    # uname -r
    max_scope: str = ""      # "global" (one value for all namespaces), "global-writable" (the same, but
    #                          writable in a namespace: kernels before 5.10.35/5.13), or "netns" (its own)
    max_global: int | None = None                       # the initial namespace's limit, where it differs
    max_own: int | None = None                          # "netns": its own value, where the initial one caps it
    nat: dict = field(default_factory=dict)             # nat.Usage.to_state(): SNAT usage, DNAT services
    insert_failed_by_dst: dict = field(default_factory=dict)  # captures: "udp 10.96.0.10:53" -> drop events
    ages: dict = field(default_factory=dict)            # forecast.summarize(): remaining timeouts, idle, candidates
    entry_bytes: int | None = None                      # memory per entry of this kernel
    entry_bytes_how: str = ""
    # A table export (doctor --file): its name; no rates, counters or rules then.
    export: str = ""
    assumed: list = field(default_factory=list)         # timeouts taken as the kernel's defaults
    malformed: int = 0                                  # export lines that are not entries
    malformed_samples: list = field(default_factory=list)  # [line number, text] of the first few
    # Set when reading a capture (report.capture_state), never recorded:
    dump_lag: float | None = None       # seconds from the dump of `ages` to the window's end (None: the window)
    inserts_seen: int | None = None     # new entries the capture's events showed over the window
    peak_fill: float | None = None      # the highest count/max of the capture's samples
