"""The one entry filter of every command: --proto, --state, --src, --dst,
--dport (destination port) and --port (either port).

It filters three shapes of the same thing:
- raw columns of a table reader with that reader's decoder (`apply`, for
  `snapshot`: each test runs once per distinct raw value, so a million
  rows cost a few dictionary look-ups each);
- ctnetlink rows (`row`: the live table of `top`, `serve`, `capture`);
- drop events (`drop`: `drops` and the latest drops of `top`).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from tracer.core.conntrack import (DPORT, DST, PORT_PROTOS, PROTO, SPORT, SRC, STATE, STATE_NAMES,
                              parse_proto, proto_name)


class Filter:
    """Entry and drop filters; every given test must pass (AND), each test
    passes if any of its values matches (OR)."""

    def __init__(self, protos: Iterable[str] = (), states: Iterable[str] = (),
                 src: Iterable[str] = (), dst: Iterable[str] = (),
                 dports: Iterable[int] = (), ports: Iterable[int] = ()):
        self.protos = frozenset(parse_proto(p) for p in protos)
        self.states = frozenset(s.strip().upper() for s in states)
        self.src = tuple(ipaddress.ip_network(c, strict=False) for c in src)
        self.dst = tuple(ipaddress.ip_network(c, strict=False) for c in dst)
        self.dports = frozenset(int(p) for p in dports)
        self.ports = frozenset(int(p) for p in ports)        # source or destination
        self.proto_names = frozenset(proto_name(p) for p in self.protos)
        self.active = bool(self.protos or self.states or self.src or self.dst or self.dports
                           or self.ports)
        self._in: dict = {}

    @property
    def cached(self) -> int:
        """Addresses whose answer is cached (bounded: a cache, not a history)."""
        return len(self._in)

    def describe(self) -> dict:
        out: dict[str, list] = {}
        if self.protos:
            out["proto"] = sorted(proto_name(p) for p in self.protos)
        if self.states:
            out["state"] = sorted(self.states)
        if self.src:
            out["src"] = [str(n) for n in self.src]
        if self.dst:
            out["dst"] = [str(n) for n in self.dst]
        if self.dports:
            out["dport"] = sorted(self.dports)
        if self.ports:
            out["port"] = sorted(self.ports)
        return out

    # --- raw columns of a table reader (snapshot) ---------------------------

    def apply(self, rows: list[tuple], dec, cache: dict) -> list[tuple]:
        """The raw rows that pass (`dec`: the reader's snapshot.Decoder).
        `cache` persists across calls. --port is not a column of raw rows:
        it is tested on the destination port here."""
        if not self.active:
            return rows
        tests = []
        if self.protos:
            tests.append((PROTO, lambda v: dec.proto(v) in self.protos, cache.setdefault("p", {})))
        if self.states:
            tests.append(((PROTO, STATE), lambda v: _state_of(dec, v) in self.states, cache.setdefault("s", {})))
        if self.src:
            tests.append((SRC, lambda v: _in_nets(dec.addr(v), self.src), cache.setdefault("src", {})))
        if self.dst:
            tests.append((DST, lambda v: _in_nets(dec.addr(v), self.dst), cache.setdefault("dst", {})))
        if self.dports or self.ports:
            want = self.dports | self.ports
            tests.append(((PROTO, DPORT), lambda v: _dport_of(dec, v) in want, cache.setdefault("d", {})))
        out = rows
        for col, test, memo in tests:
            kept = []
            for r in out:
                key = (r[col[0]], r[col[1]]) if isinstance(col, tuple) else r[col]
                ok = memo.get(key)
                if ok is None:
                    ok = memo[key] = bool(test(key))
                if ok:
                    kept.append(r)
            out = kept
        return out

    # --- ctnetlink rows and drop events ----------------------------------------
    def _within(self, nets, addr) -> bool:
        """addr (text or packed bytes) in one of nets; cached per (nets, addr)."""
        key = (id(nets), addr)
        ok = self._in.get(key)
        if ok is None:
            if len(self._in) > 100_000:         # a cache, not a history
                self._in.clear()
            try:
                ip = ipaddress.ip_address(addr)
                ok = any(ip.version == n.version and ip in n for n in nets)
            except ValueError:
                ok = False
            self._in[key] = ok
        return ok

    def row(self, row: tuple) -> bool:
        """A ctnetlink row (tracer/ctnetlink.py) passes."""
        if not self.active:
            return True
        proto = row[PROTO]
        if self.protos and proto not in self.protos:
            return False
        if self.states and _row_state(proto, row[STATE]) not in self.states:
            return False
        if self.dports and not (proto in PORT_PROTOS and row[DPORT] in self.dports):
            return False
        if self.ports and not (proto in PORT_PROTOS and (row[DPORT] in self.ports or
                                                         (len(row) > SPORT and row[SPORT] in self.ports))):
            return False
        return (not self.src or self._within(self.src, row[SRC])) and \
            (not self.dst or self._within(self.dst, row[DST]))

    def drop(self, d) -> bool:
        """A drop event (tracer.core.events.Drop) passes. --state does not apply
        (a dropped packet has no entry)."""
        if not self.active:
            return True
        if self.protos and d.proto not in self.proto_names:
            return False
        if self.dports and d.dport not in self.dports:
            return False
        if self.ports and d.sport not in self.ports and d.dport not in self.ports:
            return False
        return (not self.src or self._within(self.src, d.src)) and \
            (not self.dst or self._within(self.dst, d.dst))


def _row_state(proto: int, raw) -> str:
    names = STATE_NAMES.get(proto, ())
    return names[raw] if raw is not None and raw < len(names) else ""


def _state_of(dec, v: tuple) -> str:
    proto = dec.proto(v[0])
    return dec.state(proto, v[1]) if proto is not None else ""


def _dport_of(dec, v: tuple) -> int | None:
    proto = dec.proto(v[0])
    return dec.dport(v[1]) if proto in PORT_PROTOS else None


def _in_nets(addr: tuple[str, str] | None, nets) -> bool:
    if addr is None:
        return False
    ip = ipaddress.ip_address(addr[1])
    return any(ip.version == n.version and ip in n for n in nets)
