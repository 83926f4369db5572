"""HostState: the one record of a host's conntrack state that the doctor's
rules, the report and a capture read. Filled live by tracer/kernel/host.py,
from an export by tracer/formats/export.py, from a capture by
tracer/formats/capture.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from tracer.core.forecast import AgesSummary
from tracer.core.nat import NatState
from tracer.core.schema import Max

Counts = dict[str, int]
Name = Annotated[str, Max(256)]


# The rules text a state carries (iptables-save and nft output): 16 MiB, far
# above a real host's (kube-proxy with 10,000 services: about 5 MiB).
RULES_MAX = 16 << 20


@dataclass
class HostState:
    """What the rules look at (all plain data, JSON-able). The annotations
    are the schema a capture's recorded state is read with
    (tracer/core/schema.py): a field added here is recorded and read back
    with its type, in this one place."""
    netns: Name = "host"
    count: int | None = None
    max: int | None = None
    buckets: int | None = None
    sysctls: Counts = field(default_factory=dict)         # short name -> int
    stats: Counts = field(default_factory=dict)           # kernel counters since boot, summed
    rates: dict[str, float] = field(default_factory=dict)           # per second over the sampling window
    window: float = 0.0
    by_state: Counts = field(default_factory=dict)
    by_proto_dport: Counts = field(default_factory=dict)
    by_src: Counts = field(default_factory=dict)
    containers: dict[str, Name] = field(default_factory=dict)      # src ip -> name
    rules: Annotated[str, Max(RULES_MAX)] = ""                                     # iptables-save -t raw/-t nat + nft -a list ruleset
    total: int = 0                                      # entries in the dump
    # Added later (captures without them still load: the defaults mean "not recorded").
    deltas: Counts = field(default_factory=dict)          # exact counter increases over the window
    kernel: Name = ""                                    # uname -r
    max_scope: Name = ""      # "global" (one value for all namespaces), "global-writable" (the same, but
    #                          writable in a namespace: kernels before 5.10.35/5.13), or "netns" (its own)
    max_global: int | None = None                       # the initial namespace's limit, where it differs
    max_own: int | None = None                          # "netns": its own value, where the initial one caps it
    nat: NatState = field(default_factory=dict)             # nat.Usage.to_state(): SNAT usage, DNAT services
    insert_failed_by_dst: Counts = field(default_factory=dict)  # captures: "udp 10.96.0.10:53" -> drop events
    ages: AgesSummary = field(default_factory=dict)            # forecast.summarize(): remaining timeouts, idle, candidates
    entry_bytes: int | None = None                      # memory per entry of this kernel
    entry_bytes_how: Name = ""
    # A table export (doctor --file): its name; no rates, counters or rules then.
    export: Annotated[str, Max(4096)] = ""
    assumed: list[Name] = field(default_factory=list)         # timeouts taken as the kernel's defaults
    malformed: int = 0                                  # export lines that are not entries
    malformed_samples: list[tuple[int, Annotated[str, Max(4096)]]] = field(default_factory=list)  # [line number, text] of the first few
    # Set when reading a capture (report.capture_state), never recorded:
    # seconds from the dump of `ages` to the window's end (None: the window)
    dump_lag: float | None = field(default=None, metadata={"recorded": False})
    # new entries the capture's events showed over the window
    inserts_seen: int | None = field(default=None, metadata={"recorded": False})
    # the highest count/max of the capture's samples
    peak_fill: float | None = field(default=None, metadata={"recorded": False})
