"""NAT as the conntrack table shows it: SNAT/MASQUERADE port usage per
(SNAT address, destination, destination port, protocol), DNAT'd services,
and the SNAT rules' port ranges (from iptables-save and nft output).

NAT shows in the *reply* tuple: after SNAT the reply goes to the SNAT
address and port (reply dst != original src); after DNAT it comes from the
real backend (reply src != original dst). Both tuples of every entry are
read at the edge (tracer/kernel/ctnetlink.both_tuples, through
tracer/kernel/host.nat_usage) and fed to Usage here.

The port range when a rule gives none, and the kernel's search, are from
net/netfilter/nf_nat_core.c (nf_nat_l4proto_unique_tuple): without
--to-ports the source port is kept if the translated tuple is free,
otherwise one is searched in 1024-65535 (600-1023 for original ports
512-1023, 1-511 below 512); net.ipv4.ip_local_port_range plays no part.
The search tries at most 128 ports from a random offset, then 64, 32 and
16 from new offsets, so a mostly used range fails before it is full.
A port is taken when the reply tuple (destination, destination port ->
SNAT address, port) is already in the table: usage is counted per
(SNAT address, destination, destination port, protocol).

Everything here is pure: parse_rules and Usage work on text and rows.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, NotRequired, TypedDict

from tracer.core import command as cmd
from tracer.core.conntrack import PORT_PROTOS, proto_name
from tracer.core.schema import Max, Range


DEFAULT_RANGE = (1024, 65535)      # nf_nat_l4proto_unique_tuple, original port >= 1024
TOP = 20                           # keys kept per list in a HostState


def default_range(orig_sport: int) -> tuple[int, int]:
    """The kernel's SNAT port range when the rule gives none."""
    if orig_sport < 512:
        return (1, 511)
    if orig_sport < 1024:
        return (600, 1023)
    return DEFAULT_RANGE


# --- rules ------------------------------------------------------------------------------

@dataclass
class SnatRule:
    """One SNAT or MASQUERADE rule as a ruleset lists it."""
    kind: str                              # "MASQUERADE" or "SNAT"
    tool: str                              # "iptables", "iptables-legacy", "ip6tables", "nft"
    text: str                              # the rule as listed (iptables-save line, nft rule)
    addrs: tuple[str, str] | None = None   # SNAT address range; None: the interface's (MASQUERADE)
    ports: tuple[int, int] | None = None   # port range; None: the kernel's default
    random: bool = False
    random_fully: bool = False
    persistent: bool = False
    proto: str = ""                        # -p / meta l4proto, if the rule has one
    table: str = ""                        # nft: "ip nat"; iptables: "nat"
    chain: str = ""
    handle: int | None = None              # nft rule handle (nft -a)
    num: int | None = None                 # iptables: the rule's number in its chain (-R CHAIN num)

    @property
    def size(self) -> int | None:
        return None if self.ports is None else self.ports[1] - self.ports[0] + 1

    def covers(self, addr: str) -> bool:
        """Can this rule translate to `addr`? (MASQUERADE: any address.)"""
        if self.addrs is None:
            return True
        try:
            a = ipaddress.ip_address(addr)
            lo, hi = (ipaddress.ip_address(x) for x in self.addrs)
            return a.version == lo.version and lo <= a <= hi
        except ValueError:
            return False

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tool": self.tool, "text": self.text,
                "addrs": list(self.addrs) if self.addrs else None,
                "ports": list(self.ports) if self.ports else None, "random": self.random,
                "random_fully": self.random_fully, "persistent": self.persistent,
                "proto": self.proto, "table": self.table, "chain": self.chain, "handle": self.handle}


_PORTS = r"(\d+)(?:-(\d+))?"


def _ports(m_lo, m_hi) -> tuple[int, int] | None:
    if m_lo is None:
        return None
    lo = int(m_lo)
    hi = int(m_hi) if m_hi else lo
    return (min(lo, hi), max(lo, hi))


def _to_source(spec: str) -> tuple[tuple[str, str] | None, tuple[int, int] | None]:
    """'a[-b][:p[-q]]', '[v6][-[v6]][:p[-q]]' -> (addrs, ports)."""
    spec = spec.strip()
    ports = None
    if spec.startswith("["):                     # [2001:db8::1]-[2001:db8::2]:1000-2000
        m = re.match(r"\[([^\]]+)\](?:-\[([^\]]+)\])?(?::" + _PORTS + r")?$", spec)
        if not m:
            return None, None
        return (m.group(1), m.group(2) or m.group(1)), _ports(m.group(3), m.group(4))
    if spec.count(":") > 1:                      # a bare IPv6 address, no ports
        parts = spec.split("-")
        return (parts[0], parts[-1]), None
    addr, _, p = spec.partition(":")
    if p:
        m = re.match(_PORTS + "$", p)
        ports = _ports(m.group(1), m.group(2)) if m else None
    if not addr:
        return None, ports
    lo, _, hi = addr.partition("-")
    return (lo, hi or lo), ports


def _iptables(text: str, tool: str) -> list[SnatRule]:
    out = []
    table = ""
    nums: Counter = Counter()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            nums.clear()
            continue
        if table != "nat" or not line.startswith("-A "):
            continue
        nums[line.split()[1]] += 1
        m = re.search(r"-j (MASQUERADE|SNAT)\b(.*)$", line)
        if not m:
            continue
        kind, opts = m.group(1), m.group(2)
        r = SnatRule(kind=kind, tool=tool, text=line, table="nat", chain=line.split()[1],
                     num=nums[line.split()[1]])
        p = re.search(r"(?:^|\s)-p (\S+)", line)
        r.proto = p.group(1) if p else ""
        if kind == "MASQUERADE":
            tp = re.search(r"--to-ports " + _PORTS, opts)
            r.ports = _ports(tp.group(1), tp.group(2)) if tp else None
        else:
            srcs = re.findall(r"--to-source (\S+)", opts)
            if srcs:
                r.addrs, r.ports = _to_source(srcs[0])
        r.random = bool(re.search(r"--random(?!-)", opts))
        r.random_fully = "--random-fully" in opts
        r.persistent = "--persistent" in opts
        out.append(r)
    return out


def _nft(text: str) -> list[SnatRule]:
    """SNAT/masquerade rules of `nft [-a] list ruleset`, except the tables
    that iptables-nft manages (their rules come from iptables-save)."""
    out = []
    managed = set(re.findall(r"# Warning: table (\S+ \S+) is managed by iptables-nft", text))
    table = chain = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"table (\S+ \S+) \{", line)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"chain (\S+) \{", line)
        if m:
            chain = m.group(1)
            continue
        if table in managed:
            continue
        h = re.search(r"# handle (\d+)\s*$", line)
        body = line[:h.start()].rstrip() if h else line
        m = re.search(r"\b(masquerade|snat)\b(.*)$", body)
        if not m or body.startswith(("type ", "#")):
            continue
        kind = "MASQUERADE" if m.group(1) == "masquerade" else "SNAT"
        rest = m.group(2)
        r = SnatRule(kind=kind, tool="nft", text=body, table=table, chain=chain,
                     handle=int(h.group(1)) if h else None)
        p = re.search(r"meta l4proto (\w+)|\b(tcp|udp|sctp|dccp) (?:dport|sport)", body)
        r.proto = (p.group(1) or p.group(2)) if p else ""
        to = re.search(r"\bto (?:(?:ip6?) )?(?:to )?(\S+)", rest)
        if kind == "MASQUERADE":
            if to:
                pm = re.match(r":" + _PORTS, to.group(1))
                r.ports = _ports(pm.group(1), pm.group(2)) if pm else None
        elif to:
            r.addrs, r.ports = _to_source(to.group(1))
        flags = re.findall(r"\b(fully-random|random|persistent)\b", rest)
        r.random_fully = "fully-random" in flags
        r.random = "random" in flags
        r.persistent = "persistent" in flags
        out.append(r)
    return out


def parse_rules(text: str) -> list[SnatRule]:
    """Every SNAT/MASQUERADE rule in a HostState's rules text: sections of
    iptables-save / iptables-legacy-save / ip6tables-save output and
    `nft -a list ruleset`. The same rule listed twice is kept once."""
    rules: list[SnatRule] = []
    for tool, section in _sections(text):
        rules += _nft(section) if tool == "nft" else _iptables(section, tool)
    seen, out = set(), []
    for r in rules:
        key = (r.tool, r.text)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _sections(text: str):
    """(tool, text) pieces of a rules text. Sections made by hoststate.rules_text
    start with '# cttrace: <tool>'; older captures have no markers (iptables-save
    output followed by nft's)."""
    parts = re.split(r"^# cttrace: (\S+)\n", text, flags=re.M)
    if len(parts) == 1:
        yield "iptables", text
        yield "nft", text
        return
    if parts[0].strip():
        yield "iptables", parts[0]
    for i in range(1, len(parts) - 1, 2):
        yield parts[i], parts[i + 1]


def pick_range(rules: list[SnatRule], proto: str, addr: str, ports: tuple[int, int],
               orig_sport_min: int) -> tuple[tuple[int, int], SnatRule | None]:
    """The port range the kernel allocated from for entries translated to
    `addr` with reply ports in `ports`: the narrowest rule (of the protocol,
    able to give `addr`) whose range holds them all; else the kernel's default."""
    best: SnatRule | None = None
    for r in rules:
        if r.proto and r.proto not in (proto, "all"):
            continue
        if not r.covers(addr):
            continue
        if r.ports is None:
            if best is None:
                best = r
            continue
        if r.ports[0] <= ports[0] and ports[1] <= r.ports[1]:
            if best is None or best.ports is None or r.size < best.size:
                best = r
    if best is not None and best.ports is not None:
        return best.ports, best
    return default_range(orig_sport_min), best


# --- the table --------------------------------------------------------------------------

@dataclass
class Usage:
    """NAT seen in the table's entries (pure: fed rows, gives plain data)."""
    # (proto, snat addr, dst, dport) -> [entries, min reply port, max reply port, min original sport]
    snat: dict = field(default_factory=dict)
    # (proto, service addr, service port) -> Counter of "backend:port"
    dnat: dict = field(default_factory=dict)
    snat_entries: int = 0
    dnat_entries: int = 0
    entries: int = 0

    def add(self, proto: int, osrc: str, osport: int, odst: str, odport: int,
            rsrc: str, rsport: int, rdst: str, rdport: int) -> None:
        """One entry: its original tuple and its reply tuple."""
        self.entries += 1
        if proto not in PORT_PROTOS:
            return
        if rdst != osrc or rdport != osport:            # the reply goes elsewhere: SNAT
            self.snat_entries += 1
            key = (proto, rdst, rsrc, rsport)
            u = self.snat.get(key)
            if u is None:
                self.snat[key] = [1, rdport, rdport, osport]
            else:
                u[0] += 1
                if rdport < u[1]:
                    u[1] = rdport
                if rdport > u[2]:
                    u[2] = rdport
                if osport < u[3]:
                    u[3] = osport
        if rsrc != odst or rsport != odport:            # the reply comes from elsewhere: DNAT
            self.dnat_entries += 1
            key = (proto, odst, odport)
            c = self.dnat.get(key)
            if c is None:
                c = self.dnat[key] = Counter()
            c[f"{rsrc}:{rsport}" if ":" not in rsrc else f"[{rsrc}]:{rsport}"] += 1

    def to_state(self, top: int = TOP) -> dict:
        """The JSON-able summary a HostState keeps (biggest first, bounded)."""
        snat = sorted(self.snat.items(), key=lambda kv: -kv[1][0])
        dnat = sorted(self.dnat.items(), key=lambda kv: -sum(kv[1].values()))
        return {
            "entries": self.entries,
            "snat_entries": self.snat_entries,
            "dnat_entries": self.dnat_entries,
            "snat": [{"proto": proto_name(p), "snat": a, "dst": d, "dport": dp, "entries": n,
                      "port_min": lo, "port_max": hi, "orig_sport_min": osp}
                     for (p, a, d, dp), (n, lo, hi, osp) in snat[:top]],
            "snat_keys": len(self.snat),
            "dnat": [{"proto": proto_name(p), "service": a, "port": sp, "entries": sum(c.values()),
                      "backends": dict(c.most_common(top))}
                     for (p, a, sp), c in dnat[:top]],
            "dnat_keys": len(self.dnat),
        }


# --- fixes ------------------------------------------------------------------------------

WIDE = (1024, 65535)
_IPT_CMD = {"iptables": "iptables", "iptables-legacy": "iptables-legacy", "ip6tables": "ip6tables",
            "ip6tables-legacy": "ip6tables-legacy"}


def widened(r: SnatRule, ports: tuple[int, int] = WIDE) -> str:
    """The exact command that replaces rule `r` in place with the port range
    `ports` (only where the rule matches a port protocol, as the kernel
    requires) and fully random port selection (--random-fully / fully-random).
    Built from the rule's parsed words, each validated and shell-quoted
    (tracer/core/command.py); a rule that does not validate gives a comment
    saying why instead of a command."""
    try:
        if len(r.text) > MAX_RULE:
            raise cmd.Unsafe(f"the rule is longer than {MAX_RULE:,} characters")
        cmd.integer(ports[0], 1, 65535, "port")
        cmd.integer(ports[1], ports[0], 65535, "port")
        return _ipt_widened(r, ports) if r.tool != "nft" else _nft_widened(r, ports)
    except cmd.Unsafe as e:
        return cmd.no_command(str(e), f"the rule {r.text[:120]}")


# The longest rule a fix is written for: iptables-save and nft print rules
# of a few hundred characters (kube-proxy's longest are under 1 KiB).
MAX_RULE = 8192
_OUT_IN = ("-o", "--out-interface", "-i", "--in-interface")
_DROP_VALUE = ("--to-ports", "--to-source")
_DROP_FLAG = ("--random-fully", "--random", "--persistent")


def _with_ports(r: SnatRule) -> bool:
    return bool(r.proto) and r.proto not in ("all", "icmp", "icmpv6")


def _addr_range(r: SnatRule) -> str:
    lo, hi = (cmd.address(a, "SNAT address") for a in r.addrs)
    if lo.version == 6:
        return f"[{lo}]" + ("" if lo == hi else f"-[{hi}]")
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ipt_widened(r: SnatRule, ports: tuple[int, int]) -> str:
    try:
        words = shlex.split(r.text)                 # iptables-save quotes as "..." with \" inside
    except ValueError:
        raise cmd.Unsafe("its quoting is unbalanced") from None
    for w in words:
        cmd.printable(w)
    if words[:1] == ["-A"]:
        words = words[2:]
    chain = cmd.name(r.chain, "chain")
    for i, w in enumerate(words):
        if w in _OUT_IN and i + 1 < len(words):
            cmd.ifname(words[i + 1])
    j = next((i for i in range(len(words) - 1) if words[i] in ("-j", "--jump") and words[i + 1] == r.kind),
             None)
    if j is None:
        raise cmd.Unsafe(f"no -j {r.kind} in it")
    head, opts, rest = words[:j], words[j + 2:], []
    i = 0
    while i < len(opts):                              # drop the options the new rule sets
        if opts[i] in _DROP_VALUE:
            i += 2
            continue
        if opts[i] not in _DROP_FLAG:
            rest.append(opts[i])
        i += 1
    new = [*head, "-j", r.kind]
    if r.kind == "SNAT" and r.addrs:
        new += ["--to-source", _addr_range(r) + (f":{ports[0]}-{ports[1]}" if _with_ports(r) else "")]
    elif _with_ports(r):
        new += ["--to-ports", f"{ports[0]}-{ports[1]}"]
    new += rest + ["--random-fully"] + (["--persistent"] if r.persistent else [])
    num = cmd.integer(r.num, 1, 1 << 31, "rule number") if r.num else "RULE_NUMBER"
    return cmd.join([_IPT_CMD.get(r.tool, "iptables"), "-t", "nat", "-R", chain, num, *new])


# An nft word as `nft list ruleset` prints it: names, numbers, addresses,
# operators (!= & | ^ < >), sets ({ , }), set references (@name); a quoted
# string ("eth0", comments) holds no '"' and no control character. ';' (a
# new nft command) and '#' (a comment) are refused.
_NFT_TOKENS = re.compile(r'"[^"]*"|[^\s"]+|"')
_NFT_WORD = re.compile(r"[\w.:/,!=<>{}\[\]*@+&|^-]+", re.A)


def _nft_widened(r: SnatRule, ports: tuple[int, int]) -> str:
    fam, _, tname = r.table.partition(" ")
    if fam not in cmd.NFT_FAMILIES:
        raise cmd.Unsafe(f"the table family {cmd.comment(fam)[:20]!r} is not an nft family")
    table = [fam, cmd.name(tname, "table")]
    chain = cmd.name(r.chain, "chain")
    words = _NFT_TOKENS.findall(r.text)
    for i, w in enumerate(words):
        if w == '"':
            raise cmd.Unsafe("its quoting is unbalanced")
        if w.startswith('"'):
            cmd.printable(w)
            if i and words[i - 1] in ("oifname", "iifname"):
                cmd.ifname(w[1:-1])
        elif not _NFT_WORD.fullmatch(w):
            raise cmd.Unsafe(f"the word {cmd.comment(w)[:40]!r} is not one nft prints")
    s = next((i for i, w in enumerate(words) if w in ("masquerade", "snat")), None)
    if s is None:
        raise cmd.Unsafe("no masquerade or snat statement in it")
    head, i = [], 0
    while i < s:                                       # counters restart at zero
        if words[i] == "counter" and words[i + 1:i + 2] == ["packets"] and i + 4 <= s:
            head.append("counter")
            i += 5 if words[i + 3:i + 4] == ["bytes"] else 3
            continue
        head.append(words[i])
        i += 1
    p = f":{ports[0]}-{ports[1]}" if _with_ports(r) else ""
    if r.kind == "MASQUERADE":
        stmt = "masquerade" + (f" to {p}" if p else "")
    else:
        fam_word = words[s + 1] if words[s + 1:s + 2] in (["ip"], ["ip6"]) else ""
        stmt = "snat " + (fam_word + " " if fam_word else "") + "to " + \
            (_addr_range(r) if r.addrs else "") + p
    stmt += " " + ",".join(["fully-random"] + (["persistent"] if r.persistent else []))
    if r.handle is not None:
        handle, pre = cmd.integer(r.handle, 0, 1 << 63, "rule handle"), ""
    else:
        handle = "HANDLE"
        pre = cmd.join(["nft", "-a", "list", "chain", *table, chain]) + "   # the rule's handle\n"
    return pre + cmd.join(["nft", " ".join(["replace", "rule", *table, chain, "handle", str(handle),
                                             *head, stmt])])


# --- captures: what Usage.to_state() gives, as a capture records it (its schema) --------

Text = Annotated[str, Max(64)]
Port = Annotated[int, Range(0, 65535)]


class SnatUse(TypedDict):
    proto: Text
    snat: Text
    dst: Text
    dport: Port
    entries: Annotated[int, Range(1, 2**32)]
    port_min: Port
    port_max: Port
    orig_sport_min: NotRequired[Port]


class DnatUse(TypedDict):
    proto: Text
    service: Text
    port: Port
    entries: int
    backends: dict[Text, int]


class NatState(TypedDict, total=False):
    entries: int
    snat_entries: int
    dnat_entries: int
    snat_keys: int
    dnat_keys: int
    snat: list[SnatUse]
    dnat: list[DnatUse]
