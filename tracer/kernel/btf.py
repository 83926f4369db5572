"""A small reader of BTF (/sys/kernel/btf/vmlinux and module BTF): struct
member offsets and enum values of the *running* kernel, so that BPF
programs compiled against whatever headers exist read the right bytes.

Format: Documentation/bpf/btf.rst (struct btf_header, struct btf_type and
the per-kind data that follows each type). Split BTF (modules) continues the
base's type ids and string offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

BTF_MAGIC = 0xEB9F
# kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, \
    FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
# bytes of kind-specific data: fixed, or per vlen item
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ITEM = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BTFError(Exception):
    pass


@dataclass
class Member:
    name: str
    type_id: int
    bit_offset: int


class BTF:
    """Types of one BTF blob (optionally split on a base)."""

    def __init__(self, data: bytes, base: "BTF | None" = None):
        if len(data) < 24:
            raise BTFError("BTF blob too short")
        magic, version, flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        endian = "<"
        if magic != BTF_MAGIC:
            magic, version, flags, hdr_len = struct.unpack_from(">HBBI", data, 0)
            endian = ">"
            if magic != BTF_MAGIC:
                raise BTFError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from(endian + "IIII", data, 8)
        self._e = endian
        self._data = data
        self._types = hdr_len + type_off
        self._strs = hdr_len + str_off
        self._str_len = str_len
        self.base = base
        self._first_id = (base._first_id + len(base._offsets)) if base else 1
        self._str_base = (base._str_base + base._str_len) if base else 0
        self._offsets: list[int] = []
        self._by_name: dict[str, list[int]] = {}
        self._index(self._types, self._types + type_len)

    @classmethod
    def load(cls, path: str = "/sys/kernel/btf/vmlinux", base: "BTF | None" = None) -> "BTF":
        try:
            with open(path, "rb") as f:
                return cls(f.read(), base)
        except OSError as e:
            raise BTFError(f"cannot read {path}: {e.strerror}") from None

    # -- indexing ------------------------------------------------------------------
    def _index(self, pos: int, end: int) -> None:
        unpack = struct.Struct(self._e + "III").unpack_from
        data = self._data
        named = (STRUCT, UNION, ENUM, ENUM64, TYPEDEF, FUNC)
        offsets = self._offsets
        while pos < end:
            name_off, info, _ = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            offsets.append(pos)
            if kind in named and name_off:
                tid = self._first_id + len(offsets) - 1
                self._by_name.setdefault(self.string(name_off), []).append(tid)
            pos += 12 + _FIXED.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen

    def string(self, off: int) -> str:
        if off < self._str_base:
            return self.base.string(off) if self.base else ""
        start = self._strs + off - self._str_base
        end = self._data.index(b"\0", start)
        return self._data[start:end].decode()

    def _owner(self, tid: int) -> "BTF":
        b: BTF | None = self
        while b is not None and tid < b._first_id:
            b = b.base
        if b is None:
            raise BTFError(f"type id {tid} out of range")
        return b

    def _type(self, tid: int) -> tuple[int, int, int, int, int]:
        """(pos, name_off, kind, vlen, size_or_type) of type `tid` (in its owner)."""
        b = self._owner(tid)
        pos = b._offsets[tid - b._first_id]
        name_off, info, st = struct.unpack_from(b._e + "III", b._data, pos)
        return pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF, st

    def find(self, name: str, kinds=(STRUCT, UNION)) -> int:
        for b in self._chain():
            for tid in b._by_name.get(name, ()):
                if b._owner(tid)._type(tid)[2] in kinds:
                    return tid
        raise BTFError(f"no {name!r} in this kernel's BTF")

    def _chain(self):
        b: BTF | None = self
        while b is not None:
            yield b
            b = b.base

    def resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            b = self._owner(tid)
            _, _, kind, _, st = b._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = st

    def members(self, tid: int) -> list[Member]:
        b = self._owner(tid)
        pos, _, kind, vlen, _ = b._type(tid)
        if kind not in (STRUCT, UNION):
            raise BTFError(f"type {tid} is not a struct or union")
        _, info, _ = struct.unpack_from(b._e + "III", b._data, pos)
        bitfields = bool(info >> 31)
        out = []
        unpack = struct.Struct(b._e + "III").unpack_from
        for i in range(vlen):
            name_off, mtype, off = unpack(b._data, pos + 12 + 12 * i)
            out.append(Member(b.string(name_off), mtype, off & 0xFFFFFF if bitfields else off))
        return out

    # -- what BPF programs need ----------------------------------------------------------
    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of member `path` ('a.b.c') in struct `struct_name`;
        members of anonymous structs and unions are found through them."""
        tid = self.find(struct_name)
        total = 0
        for part in path.split("."):
            found = self._find_member(self.resolve(tid), part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path!r} in this kernel")
            bits, tid = found
            if bits % 8:
                raise BTFError(f"{struct_name}.{path} is a bitfield")
            total += bits // 8
        return total

    def _find_member(self, tid: int, name: str) -> tuple[int, int] | None:
        for m in self.members(tid):
            if m.name == name:
                return m.bit_offset, m.type_id
            if not m.name:                                  # anonymous struct/union
                inner = self.resolve(m.type_id)
                if self._owner(inner)._type(inner)[2] in (STRUCT, UNION):
                    hit = self._find_member(inner, name)
                    if hit is not None:
                        return m.bit_offset + hit[0], hit[1]
        return None

    def has_func(self, name: str) -> bool:
        """Whether this blob itself (not its base) describes function `name`."""
        return any(self._type(t)[2] == FUNC for t in self._by_name.get(name, ()))

    def size(self, name: str) -> int:
        return self._type(self.find(name))[4]

    def enum(self, enum_name: str) -> dict[str, int]:
        tid = self.find(enum_name, kinds=(ENUM, ENUM64))
        b = self._owner(tid)
        pos, _, kind, vlen, _ = b._type(tid)
        out = {}
        if kind == ENUM:
            unpack = struct.Struct(b._e + "Ii").unpack_from
            for i in range(vlen):
                name_off, val = unpack(b._data, pos + 12 + 8 * i)
                out[b.string(name_off)] = val
        else:
            unpack = struct.Struct(b._e + "IIi").unpack_from
            for i in range(vlen):
                name_off, lo, hi = unpack(b._data, pos + 12 + 12 * i)
                out[b.string(name_off)] = (hi << 32) | lo
        return out
