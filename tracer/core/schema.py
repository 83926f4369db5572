"""JSON from elsewhere (a capture made on another host) checked against the
Python types that describe it: one schema per record, written once as
type annotations (HostState's fields, the TypedDicts of capture records,
forecast.AgesSummary, nat.NatState), read here with typing's introspection.

What passes: ints that are not bools, within 0..2**64-1 (the widest kernel
counter) or an Annotated Range; floats (or ints) that are finite, within
±1e18 or a Range; strings of at most MAX_STR characters (or an Annotated
Max); dicts and lists of at most MAX_ITEMS entries (or Max), keys and
values typed; TypedDicts keep their annotated keys only (others are left
out) and need their required ones. A value that does not fit raises
Invalid. The walk follows the types, never the data, so its depth is the
schema's (a list nested 900 deep fails at the first level).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Union, get_args, get_origin, get_type_hints

MAX_INT = 2**64 - 1
MAX_FLOAT = 1e18
MAX_STR = 4096
MAX_ITEMS = 100_000


class Invalid(ValueError):
    """A value that does not have its schema's type or bounds."""


@dataclass(frozen=True)
class Max:
    """At most n characters (str) or entries (dict, list)."""
    n: int


@dataclass(frozen=True)
class Range:
    """A number within lo..hi."""
    lo: float
    hi: float


@dataclass(frozen=True)
class Pattern:
    """A string matching this regular expression in full (e.g. digits)."""
    regex: str


Digits = Annotated[str, Pattern(r"[0-9]{1,10}")]      # a JSON key that is a whole number


def _meta(tp):
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return base, meta
    return tp, []


def check(value, tp):
    """`value` if it has type `tp` (a copy keeping only typed keys), else Invalid."""
    tp, meta = _meta(tp)
    size = next((m.n for m in meta if isinstance(m, Max)), None)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    pat = next((m.regex for m in meta if isinstance(m, Pattern)), None)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return check(value, arg)
            except Invalid:
                continue
        raise Invalid(f"not {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise Invalid("not null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise Invalid("not a boolean")
    if tp is int:
        lo, hi = (rng.lo, rng.hi) if rng else (0, MAX_INT)
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise Invalid("not a whole number in range")
    if tp is float:
        lo, hi = (rng.lo, rng.hi) if rng else (-MAX_FLOAT, MAX_FLOAT)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and lo <= value <= hi:
            return value
        raise Invalid("not a finite number in range")
    if tp is str:
        if isinstance(value, str) and len(value) <= (size or MAX_STR) and \
                (pat is None or re.fullmatch(pat, value)):
            return value
        raise Invalid("not a string of that form")
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            raise Invalid("not an object")
        hints = _hints(tp)
        missing = _REQUIRED[tp] - value.keys()
        if missing:
            raise Invalid(f"no {sorted(missing)[0]}")
        return {k: check(value[k], t) for k, t in hints.items() if k in value}
    if origin is dict:
        kt, vt = get_args(tp)
        if isinstance(value, dict) and len(value) <= (size or MAX_ITEMS):
            return {check(k, kt): check(v, vt) for k, v in value.items()}
        raise Invalid("not an object of that size")
    if origin is list:
        (it,) = get_args(tp)
        if isinstance(value, list) and len(value) <= (size or MAX_ITEMS):
            return [check(v, it) for v in value]
        raise Invalid("not a list of that size")
    if origin is tuple:                              # a JSON array of fixed length
        args = get_args(tp)
        if isinstance(value, list) and len(value) == len(args):
            return [check(v, t) for v, t in zip(value, args)]
        raise Invalid("not a list of that length")
    raise TypeError(f"no schema for {tp!r}: annotate it with parameters (dict[str, int], ...)")


_HINTS: dict = {}
_REQUIRED: dict = {}


def _hints(cls) -> dict:
    """A class's resolved annotations. For a TypedDict also its required
    keys, from Required/NotRequired and total= (computed here: with string
    annotations, 3.11's __required_keys__ does not see NotRequired)."""
    h = _HINTS.get(cls)
    if h is None:
        h = get_type_hints(cls, include_extras=True)
        required = set()
        for k in list(h):
            o = get_origin(h[k])
            if o in (typing.Required, typing.NotRequired):
                h[k] = get_args(h[k])[0]
            if o is typing.Required or (o is not typing.NotRequired and _total(cls, k)):
                required.add(k)
        _HINTS[cls], _REQUIRED[cls] = h, frozenset(required)
    return h


def _total(cls, key: str) -> bool:
    """Is `key` required by the class's total=? (These schemas never mix
    total= across a TypedDict and its bases.)"""
    return getattr(cls, "__total__", True)


def recorded_fields(cls) -> dict:
    """{name: type} of a dataclass's fields that records carry (metadata
    recorded=False leaves a field out), or of a TypedDict's keys."""
    hints = _hints(cls)
    if typing.is_typeddict(cls):
        return hints
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("recorded", True)}


def fields_of(cls, raw) -> dict:
    """The fields of `cls` (a dataclass or a TypedDict) in `raw` that have
    their annotated types; a field that does not is left out (its default
    stands)."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for name, tp in recorded_fields(cls).items():
        v = raw.get(name)
        if v is None:
            continue
        try:
            out[name] = check(v, tp)
        except Invalid:
            continue
    return out
