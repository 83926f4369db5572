"""Who a fix cuts: entries grouped by application (destination port) first,
then by source, with the prefixes that cover the sources. Pure.

    group([("10.1.0.7", "tcp/5432", 1), ...]) ->
    [{"app": "tcp/5432", "entries": 3000, "sources": 3000,
      "prefixes": ["10.1.0.0/20"], "top_sources": [{"src": "10.1.0.7", "entries": 1}, ...],
      "other_sources": 2997}]

The shape is documented in docs/json.md ("cuts").
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from typing import Annotated, TypedDict

from tracer.core.schema import Max

MAX_APPS = 5            # applications listed per finding
MAX_SOURCES = 3         # top sources listed per application
MAX_PREFIXES = 4        # covering prefixes listed per application and address family
EXACT = 4096           # up to this many sources per family are collapsed exactly
COARSE = 64            # more exact prefixes than this are widened first
DENSE = 0.5             # two prefixes merge into their common supernet when it is this full


# --- the shape of group()'s result, as a capture records it (its schema) -------
Address = Annotated[str, Max(64)]


class TopSource(TypedDict):
    src: Address
    entries: int


class Group(TypedDict):
    app: Annotated[str, Max(64)]          # "tcp/5432"
    entries: int
    sources: int
    prefixes: Annotated[list[Address], Max(4 * MAX_PREFIXES)]
    top_sources: Annotated[list[TopSource], Max(4 * MAX_SOURCES)]
    other_sources: int


Cuts = Annotated[list[Group], Max(64)]


def group(pairs, apps: int = MAX_APPS, sources: int = MAX_SOURCES) -> list[dict]:
    """pairs: (source address, "proto/port", entries). The `apps` biggest
    applications (most entries first, then by name), each with its entry
    count, its number of sources, their covering prefixes and its
    `sources` biggest sources."""
    by: dict = defaultdict(Counter)
    for src, app, n in pairs:
        by[app][src] += n
    out = []
    for app, srcs in sorted(by.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:apps]:
        top = sorted(srcs.items(), key=lambda kv: (-kv[1], _addr_key(kv[0])))[:sources]
        out.append({"app": app, "entries": sum(srcs.values()), "sources": len(srcs),
                    "prefixes": prefixes(srcs),
                    "top_sources": [{"src": s, "entries": n} for s, n in top],
                    "other_sources": len(srcs) - len(top)})
    return out


def _addr_key(a: str):
    try:
        ip = ipaddress.ip_address(a)
        return (ip.version, int(ip), a)
    except ValueError:
        return (9, 0, a)


def summary(groups: list[dict]) -> str:
    """'tcp/5432: 3,000 entries from 3,000 sources in 10.1.0.0/20; udp/53: ...' (no sources listed)."""
    return "; ".join(line(g, sources=False) for g in groups)


def prefixes(addresses, limit: int = MAX_PREFIXES) -> list[str]:
    """Prefixes covering `addresses` (strings; unparsable ones are skipped):
    the exact collapse (ipaddress.collapse_addresses), then neighbours
    merged into their common supernet while that supernet is at least half
    covered or while there are more than `limit` per family. Largest first."""
    fams: dict = defaultdict(list)
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        fams[ip.version].append(ip)
    out = []
    for v in sorted(fams):
        ips = sorted(set(fams[v]))
        keys = [int(ip) for ip in ips]
        if len(keys) > EXACT:
            # many sources: the longest prefix length at which they fall in COARSE networks or fewer
            bits = ips[0].max_prefixlen
            shift = next(s for s in range(bits + 1) if len({k >> s for k in keys}) <= COARSE)
            cls = ipaddress.IPv4Network if v == 4 else ipaddress.IPv6Network
            nets = [_tight(cls, keys, cls((k << shift, bits - shift)))
                    for k in sorted({k >> shift for k in keys})]
        else:
            nets = list(ipaddress.collapse_addresses(ips))
        while len(nets) > COARSE:
            # many scattered prefixes: widen the longest ones one bit at a time
            longest = max(n.prefixlen for n in nets)
            nets = list(ipaddress.collapse_addresses(
                n.supernet() if n.prefixlen == longest else n for n in nets))
        while len(nets) > 1:
            # the pair of neighbours whose common supernet is smallest
            i, sup = max(((i, _common(nets[i], nets[i + 1])) for i in range(len(nets) - 1)),
                         key=lambda x: x[1].prefixlen)
            inside = bisect_right(keys, int(sup.broadcast_address)) - \
                bisect_left(keys, int(sup.network_address))
            if len(nets) <= limit and inside < DENSE * sup.num_addresses:
                break
            nets = list(ipaddress.collapse_addresses(nets[:i] + [sup] + nets[i + 2:]))
        out += sorted(nets, key=lambda n: (n.prefixlen, n))
    return [str(n) for n in out]


def _tight(cls, keys: list[int], net):
    """The smallest network holding the addresses of `keys` (sorted) inside `net`."""
    lo = keys[bisect_left(keys, int(net.network_address))]
    hi = keys[bisect_right(keys, int(net.broadcast_address)) - 1]
    bits = net.max_prefixlen - (lo ^ hi).bit_length()
    return cls((lo >> (net.max_prefixlen - bits) << (net.max_prefixlen - bits), bits))


def _common(a, b):
    """The smallest network holding both a and b."""
    n = a
    while not (b.subnet_of(n)):
        n = n.supernet()
    return n


def text(groups: list[dict]) -> str:
    """'tcp/5432: 3,000 entries from 3,000 sources in 10.1.0.0/20 (top: 10.1.0.1 1, ...)' per
    application, joined by '; '."""
    return "; ".join(line(g) for g in groups)


def line(g: dict, sources: bool = True) -> str:
    pre = g.get("prefixes") or []
    srcs = g.get("sources", 0)
    out = (f"{g['app']}: {g['entries']:,} entr{'y' if g['entries'] == 1 else 'ies'} from "
           f"{srcs:,} source{'' if srcs == 1 else 's'}")
    if pre and srcs > 1:
        out += " in " + ", ".join(pre)
    top = (g.get("top_sources") or []) if sources else []
    if top and srcs > 1:
        out += " (most: " + ", ".join(f"{t['src']} {t['entries']:,}" for t in top) + ")"
    elif top:
        out += f" ({top[0]['src']})"
    return out
