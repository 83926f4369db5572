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
from collections import Counter
from dataclasses import dataclass, field

from tracer.core.conntrack import PORT_PROTOS, proto_name


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
    requires) and fully random port selection (--random-fully / fully-random)."""
    flags = ["fully-random"] + (["persistent"] if r.persistent else [])
    with_ports = bool(r.proto) and r.proto not in ("all", "icmp", "icmpv6")
    if r.tool != "nft":
        cmd = _IPT_CMD.get(r.tool, "iptables")
        spec = r.text.split(None, 2)[2] if r.text.startswith("-A ") else r.text
        head, _, opts = spec.partition("-j " + r.kind)
        opts = re.sub(r"\s*--(?:to-ports|to-source) \S+|\s*--random-fully|\s*--random\b|\s*--persistent",
                      "", opts).strip()
        new = head.rstrip() + " -j " + r.kind
        if r.kind == "SNAT" and r.addrs:
            a = r.addrs[0] if r.addrs[0] == r.addrs[1] else f"{r.addrs[0]}-{r.addrs[1]}"
            if ":" in a:
                a = f"[{r.addrs[0]}]" + ("" if r.addrs[0] == r.addrs[1] else f"-[{r.addrs[1]}]")
            new += f" --to-source {a}" + (f":{ports[0]}-{ports[1]}" if with_ports else "")
        elif with_ports:
            new += f" --to-ports {ports[0]}-{ports[1]}"
        new += (" " + opts if opts else "") + " --random-fully" + (" --persistent" if r.persistent else "")
        where = f"{r.chain} {r.num}" if r.num else f"{r.chain} RULE_NUMBER"
        return f"{cmd} -t nat -R {where} {new}"
    body = re.sub(r"counter packets \d+ bytes \d+", "counter", r.text)
    m = re.search(r"\b(masquerade|snat)\b.*$", body)
    head = body[:m.start()] if m else body + " "
    if r.kind == "MASQUERADE":
        stmt = "masquerade" + (f" to :{ports[0]}-{ports[1]}" if with_ports else "")
    else:
        fam = re.match(r"snat (ip6?) ", m.group(0)) if m else None
        a = "" if not r.addrs else (r.addrs[0] if r.addrs[0] == r.addrs[1] else f"{r.addrs[0]}-{r.addrs[1]}")
        if ":" in a:
            a = f"[{a}]"
        stmt = "snat " + (fam.group(1) + " " if fam else "") + "to " + a \
            + (f":{ports[0]}-{ports[1]}" if with_ports else "")
    stmt += " " + ",".join(flags)
    handle = r.handle if r.handle is not None else "HANDLE"
    pre = "" if r.handle is not None else f"nft -a list chain {r.table} {r.chain}   # the rule's handle\n"
    return pre + f"nft 'replace rule {r.table} {r.chain} handle {handle} {head}{stmt}'"


# --- captures ---------------------------------------------------------------------------

def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def clean_state(raw) -> dict:
    """The parts of a recorded `nat` summary (Usage.to_state) with the right
    types; anything else is left out (a capture is untrusted input)."""
    if not isinstance(raw, dict):
        return {}
    out: dict = {k: raw[k] for k in ("entries", "snat_entries", "dnat_entries", "snat_keys", "dnat_keys")
                 if _int(raw.get(k))}
    snat = []
    for u in raw["snat"] if isinstance(raw.get("snat"), list) else []:
        if isinstance(u, dict) and all(isinstance(u.get(k), str) for k in ("proto", "snat", "dst")) \
                and all(_int(u.get(k)) for k in ("dport", "entries", "port_min", "port_max")) \
                and u["entries"] > 0 and 0 <= u["port_min"] <= u["port_max"] <= 65535:
            osp = u.get("orig_sport_min")
            snat.append({k: u[k] for k in ("proto", "snat", "dst", "dport", "entries", "port_min",
                                           "port_max")} | {"orig_sport_min": osp if _int(osp) else 1024})
    dnat = []
    for d in raw["dnat"] if isinstance(raw.get("dnat"), list) else []:
        if isinstance(d, dict) and isinstance(d.get("proto"), str) and isinstance(d.get("service"), str) \
                and _int(d.get("port")) and _int(d.get("entries")) and isinstance(d.get("backends"), dict) \
                and all(isinstance(b, str) and _int(n) for b, n in d["backends"].items()):
            dnat.append({k: d[k] for k in ("proto", "service", "port", "entries", "backends")})
    if isinstance(raw.get("snat"), list):
        out["snat"] = snat
    if isinstance(raw.get("dnat"), list):
        out["dnat"] = dnat
    return out
