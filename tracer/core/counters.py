"""The kernel's conntrack counters: one formula per quantity.

Every command derives table-full drops, clash drops and counter increases
here, from the per-CPU rows of /proc/net/stat/nf_conntrack (or ctnetlink's
CTA_STATS_*), per CPU or summed.

What the kernel counts (net/netfilter/nf_conntrack_core.c, Linux 6.1-6.18;
the stat rows are printed by ct_cpu_seq_show() in nf_conntrack_standalone.c):

- `drop`: resolve_normal_ct() failing in nf_conntrack_in() ("Too stressed
  to deal": __nf_conntrack_alloc() found the table full and early_drop()
  freed nothing), NF_CT_STAT_INC_ATOMIC(drop); a protocol tracker's verdict
  -NF_DROP, counted with `invalid`; and a clash at confirm that
  nf_ct_resolve_clash() could not resolve, whose `drop:` label does
  NF_CT_STAT_INC(net, drop) and NF_CT_STAT_INC(net, insert_failed).
- `insert_failed`: that clash drop; __nf_conntrack_confirm()'s
  `chaintoolong:` label (NF_CT_STAT_INC(net, chaintoolong) and
  NF_CT_STAT_INC(net, insert_failed), ret = NF_DROP: the packet is dropped
  but `drop` is NOT counted); an entry found dying at confirm.
- `chaintoolong` (5.16+, nf_conntrack_max_chainlen): only with
  insert_failed, as above (and in nf_conntrack_hash_check_insert(), the
  ctnetlink insert, without a packet).

So: clash drops = insert_failed - chaintoolong, and table-full drops =
drop - clash drops (which still holds the rare tracker drops, told apart
elsewhere with `invalid`). A kernel without `chaintoolong` counts 0 there.

Counter increases, one policy. struct ip_conntrack_stat's fields are
`unsigned int`, per CPU, printed as %08x (ctnetlink: nla_put_be32): each
wraps at 2**32. The kernel never resets them (no write handler; they live
and die with their namespace), so a value that went down is a 32-bit wrap,
unless the namespace behind the path is a new one (a new namespace starts
from zero). Between two readings no counter grows by 2**31 (that would be
2 billion drops in one interval), so an increase modulo 2**32 below 2**31
is a wrap and anything else a reset, whose new value counts from zero. The
same holds for a sum over CPUs: k CPUs wrapping lower the sum by k * 2**32,
which the modulo removes.
"""

from __future__ import annotations

WRAP = 1 << 32          # struct ip_conntrack_stat: unsigned int fields
_RESET = 1 << 31        # a modular increase this large is a new namespace's counter


def increase(old: int, new: int) -> int:
    """How much a kernel counter (or a sum of per-CPU ones) grew from
    `old` to `new`: modulo 2**32 (a wrap), or `new` after a reset."""
    d = (new - old) % WRAP
    return d if d < _RESET else max(new, 0)


def clash_drops(c: dict) -> int:
    """Packets dropped at confirm because their entry clashed (NAT port
    exhaustion, the UDP race): insert_failed less chaintoolong."""
    return max(c.get("insert_failed", 0) - c.get("chaintoolong", 0), 0)


def table_full_drops(c: dict) -> int:
    """`drop` without the clash drops counted in it: the table-full refusals
    (and the rare drops by a protocol tracker's verdict, counted in `invalid`)."""
    return max(c.get("drop", 0) - clash_drops(c), 0)


def with_table_full(c: dict) -> dict:
    """The counters with "table_full" added (JSON key of every command)."""
    out = dict(c)
    out["table_full"] = table_full_drops(c)
    return out


def summed(rows: list[dict]) -> dict[str, int]:
    """Per-CPU rows ({"cpu": n, stat: value, ...}) summed per stat."""
    out: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if k != "cpu":
                out[k] = out.get(k, 0) + v
    return out


def deltas(a: dict, b: dict) -> dict[str, int]:
    """Increase of each counter from reading `a` to reading `b` (per-CPU
    rows, or sums: both go through increase())."""
    return {k: increase(a.get(k, 0), v) for k, v in b.items() if k != "cpu"}


def row_deltas(a: list[dict], b: list[dict]) -> dict[str, int]:
    """Summed increase between two sets of per-CPU rows, each CPU's
    counters taken on their own (a CPU absent from `a` counts from zero)."""
    before = {r["cpu"]: r for r in a}
    out: dict[str, int] = {}
    for r in b:
        for k, v in deltas(before.get(r["cpu"], {}), r).items():
            out[k] = out.get(k, 0) + v
    return out


def series_deltas(readings: list[dict]) -> dict[str, int]:
    """Increase of each counter over consecutive readings (sums per stat,
    as a capture's stats records hold them)."""
    out: dict[str, int] = {}
    for p, s in zip(readings, readings[1:]):
        for k, v in deltas(p, s).items():
            out[k] = out.get(k, 0) + v
    return out


class Accumulator:
    """Per-CPU readings of one namespace's counters accumulated into totals
    since the first reading (or since `baseline`): acc[(cpu, stat)] =
    [last raw value, total]. A counter first seen after the start counts
    from zero (it was born later).

    One namespace's counters are never reset, so a counter that went down
    is either a 32-bit wrap (a modular increase below 2**31, counted) or a
    reading OLDER than one already added: readers that read the kernel
    outside the lock guarding add() (serve's 16 scrapers and its pump loop)
    add in any order. An older reading adds nothing and leaves the last
    value alone. (increase()'s "anything larger is a reset" would add the
    counter's whole value for it: 1 minute of the soak with 16 scrapers
    made serve's table_full 117,471 against the kernel's 54,790.)"""

    def __init__(self, baseline: list[dict] | None = None) -> None:
        self.acc: dict[tuple[int, str], list[int]] = {}
        for r in baseline or ():
            for stat, v in r.items():
                if stat != "cpu":
                    self.acc[(r["cpu"], stat)] = [v, 0]

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            cpu = r["cpu"]
            for stat, v in r.items():
                if stat == "cpu":
                    continue
                a = self.acc.get((cpu, stat))
                if a is None:
                    self.acc[(cpu, stat)] = [v, v]
                else:
                    d = (v - a[0]) % WRAP
                    if d < _RESET:          # grew, or wrapped; else an older reading
                        a[1] += d
                        a[0] = v

    def per_cpu(self, stat: str) -> dict[int, int]:
        """{cpu: total} of one stat."""
        return {cpu: a[1] for (cpu, s), a in self.acc.items() if s == stat}

    def by_stat(self) -> dict[str, dict[int, int]]:
        """{stat: {cpu: total}}."""
        out: dict[str, dict[int, int]] = {}
        for (cpu, stat), a in self.acc.items():
            out.setdefault(stat, {})[cpu] = a[1]
        return out

    def totals(self) -> dict[str, int]:
        """Each stat's total summed over CPUs."""
        out: dict[str, int] = {}
        for (_, stat), a in self.acc.items():
            out[stat] = out.get(stat, 0) + a[1]
        return out
