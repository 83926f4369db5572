"""Published ports from a namespace's DNAT rules (iptables-save -t nat):
which (protocol, host address, port) a packet is DNATed from, and to which
address. A table-full drop happens before NAT, so its tuple still carries
the node's address and port; these rules say whose container or pod it was
going to (tracer/kernel/attribution.py names the address).

Docker writes its ports down (config.v2.json); Podman (netavark), the CNI
portmap plugin and kube-proxy (NodePorts and ClusterIPs) write only rules:

  -A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
  -A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -m comment ... -j NETAVARK-DN-1
  -A NETAVARK-DN-1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80
  -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -j KUBE-SVC-X
  -A KUBE-SVC-X -m statistic --mode random --probability 0.5 -j KUBE-SEP-A
  -A KUBE-SEP-A -p udp -m udp -j DNAT --to-destination 10.244.0.5:53

The chains are walked from PREROUTING and OUTPUT with what each rule on
the way requires (protocol, one destination address, one destination
port); a DNAT reached with a protocol and a port known gives one mapping.
Rule order and first-match are not modelled: every DNAT target a (protocol,
address, port) can reach is listed, and attribution names a port only when
all its targets are one container's or pod's. Conditions this does not
read (interfaces, sources, marks, address types, statistic, negations)
are taken as true; a rule whose destination is a network, a port range or
a multiport list is not followed (it cannot name one address and port). Pure: text in, tuples out.
The text is the output of a root process in a runtime's namespace, but is
read as hostile all the same: bounded in lines, chains, depth and steps,
and every field is parsed, never passed on.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tracer.core import nat

MAX_RULES = 200_000          # rules read from one ruleset (a big Kubernetes node: tens of thousands)
MAX_DEPTH = 24               # jumps followed from a base chain
MAX_STEPS = 2_000_000        # rules looked at in one walk
PROTOS = ("tcp", "udp", "sctp")
_CHAIN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# quoted strings (comments) are emptied before a rule is split into words: no
# field this reads is quoted (a quoted value parses as nothing)
_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"')


@dataclass(frozen=True)
class Dnat:
    proto: str       # "tcp", "udp", "sctp"
    addr: str        # the host address matched ("" for any)
    port: int        # the destination port matched
    to: str          # the address DNATed to


@dataclass
class _Rule:
    proto: str | None
    addr: str | None           # one host address, or None for any
    port: int | None
    target: str
    to: str | None             # DNAT --to-destination's address


def _host(spec: str) -> str | None:
    """'10.96.0.10/32' or '10.96.0.10' -> the address; a network or
    anything else -> None (the rule is not followed)."""
    a, _, plen = spec.partition("/")
    try:
        ip = ipaddress.ip_address(a)
    except ValueError:
        return None
    if plen and plen != str(ip.max_prefixlen):
        return None
    return str(ip)


def _to_addr(spec: str) -> str | None:
    """--to-destination's one address ('A', 'A:P', '[A6]:P', 'A6', read as
    nat._to_source reads --to-source); a range of addresses -> None."""
    addrs, _ = nat._to_source(spec)
    if addrs is None or addrs[0] != addrs[1]:
        return None
    try:
        return str(ipaddress.ip_address(addrs[0]))
    except ValueError:
        return None


def _value(words: list[str], flag: str) -> tuple[bool, str | None] | None:
    """(negated, value) of a flag's first use in a rule, None if absent
    (iptables-save prints each match in its short, canonical form)."""
    try:
        i = words.index(flag)
    except ValueError:
        return None
    return (i > 0 and words[i - 1] == "!"), (words[i + 1] if i + 1 < len(words) else None)


def _rule(words: list[str]) -> tuple[str, _Rule] | None:
    """(chain, rule) of an '-A CHAIN ...' line split into words (quoted
    strings taken out), or None when the rule cannot name one destination
    (see the module)."""
    if len(words) < 4 or not _CHAIN.fullmatch(words[1]):
        return None
    j = _value(words, "-j") or _value(words, "-g")
    if j is None or j[1] is None or j[0]:
        return None
    if "--dports" in words:
        return None
    proto = addr = port = to = None
    if (v := _value(words, "-p")) is not None and not v[0]:
        if v[1] is None:
            return None
        proto = v[1].lower()
    if (v := _value(words, "-d")) is not None and not v[0]:
        if v[1] is None or (addr := _host(v[1])) is None:
            return None
    if (v := _value(words, "--dport")) is not None and not v[0]:
        if v[1] is None or not v[1].isdigit() or not 0 < int(v[1]) < 65536:
            return None
        port = int(v[1])
    if j[1] == "DNAT" and (v := _value(words, "--to-destination")) is not None and v[1] is not None:
        to = _to_addr(v[1])
    return words[1], _Rule(proto, addr, port, j[1], to)


def parse(text: str) -> dict[str, list[_Rule]]:
    """{chain: its rules} of the nat table in iptables-save output (both
    families' outputs may be concatenated: each '*nat' section is read)."""
    chains: dict[str, list[_Rule]] = {}
    in_nat = False
    count = 0
    for line in _QUOTED.sub('""', text).splitlines():
        if line.startswith("*"):
            in_nat = line.strip() == "*nat"
            continue
        if not in_nat or not line.startswith("-A "):
            continue
        count += 1
        if count > MAX_RULES:
            break
        got = _rule(line.split())
        if got is not None:
            chains.setdefault(got[0], []).append(got[1])
    return chains


def published(text: str) -> list[Dnat]:
    """Every (protocol, host address, port) -> address a packet can be
    DNATed by these rules, from PREROUTING (packets arriving) and OUTPUT
    (the node's own), in order found, each once."""
    chains = parse(text)
    out: dict[Dnat, None] = {}
    steps = 0
    seen: set[tuple] = set()

    def walk(chain: str, proto: str | None, addr: str | None, port: int | None, depth: int) -> None:
        nonlocal steps
        key = (chain, proto, addr, port)
        if depth > MAX_DEPTH or key in seen:
            return
        seen.add(key)
        for r in chains.get(chain, ()):
            steps += 1
            if steps > MAX_STEPS:
                return
            p, a, n = proto, addr, port
            if r.proto is not None:
                if p is not None and r.proto != p:
                    continue
                p = r.proto
            if r.addr is not None:
                if a is not None and r.addr != a:
                    continue
                a = r.addr
            if r.port is not None:
                if n is not None and r.port != n:
                    continue
                n = r.port
            if r.target == "DNAT":
                if r.to is not None and p in PROTOS and n is not None:
                    out.setdefault(Dnat(p, a or "", n, r.to))
            elif r.target in chains:
                walk(r.target, p, a, n, depth + 1)

    for base in ("PREROUTING", "OUTPUT"):
        walk(base, None, None, None, 0)
    return list(out)
