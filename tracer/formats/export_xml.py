"""`conntrack -L -o xml` exports: each <flow> becomes the line `conntrack -L`
prints for it, so the one text Scanner (export.py) counts both formats the
same way, and a malformed flow is counted and numbered as a malformed line.

conntrack-tools 1.4.7 (libnetfilter_conntrack's snprintf_xml.c) writes one
flow a line:
  <flow><meta direction="original"><layer3 protonum="2" protoname="ipv4">
  <src>…</src><dst>…</dst></layer3><layer4 protonum="6" protoname="tcp">
  <sport>…</sport><dport>…</dport></layer4><counters>…</counters></meta>
  <meta direction="reply">…</meta><meta direction="independent"><state>…
  </state><timeout>…</timeout><mark>…</mark><zone>…</zone><use>…</use>
  <id>…</id><assured/><unreplied/></meta></flow>
(ICMP flows have an empty <layer4>; UDP and ICMP no <state>.)

The text is hostile: no DTD or entity is accepted (conntrack writes none,
and they are how XML expands a small file into a huge one), one flow may
take at most MAX_FLOW bytes (memory stays bounded by that, not by the
file), and every value put on a line must be one plain token, so a value
cannot forge fields or lines.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator
from xml.etree.ElementTree import ParseError, XMLPullParser

MAX_FLOW = 64 << 10         # bytes of one <flow>; conntrack's are under 1 KiB
FEED = 16 << 10             # the parser gets the text in pieces of this size
LINES_PER_BLOCK = 65536

_TOKEN = re.compile(r"[0-9A-Za-z.:_-]{1,64}")   # addresses, numbers, state names
_XML_START = re.compile(rb"\s*<(?:\?xml|conntrack\b|flow\b)")
BAD_FLOW = b"xml-flow-not-understood"            # a line no parser accepts: counted malformed


class XmlError(Exception):
    """The XML cannot be read on: the message says where and why."""


def is_xml(head: bytes) -> bool:
    """Does an export start like conntrack's XML output?"""
    return _XML_START.match(head) is not None


def _tok(v: str | None) -> str | None:
    return v if v is not None and _TOKEN.fullmatch(v) else None


def _tuple(meta) -> tuple[str, str, str, str, str, str] | None:
    """(l4 name, l4 number, src, dst, sport, dport) of a direction; '' for
    absent ports; None when something is not a plain token."""
    l3, l4 = meta.find("layer3"), meta.find("layer4")
    if l3 is None or l4 is None:
        return None
    src, dst = _tok(l3.findtext("src")), _tok(l3.findtext("dst"))
    name, num = _tok(l4.get("protoname")), _tok(l4.get("protonum"))
    if None in (src, dst, name, num) or not num.isdigit():
        return None
    sport, dport = l4.findtext("sport"), l4.findtext("dport")
    if (sport is None) != (dport is None):
        return None
    if sport is not None and not (sport.isdigit() and dport.isdigit() and len(sport) <= 5
                                  and len(dport) <= 5):
        return None
    return name.lower(), num, src, dst, sport or "", dport or ""


def _acct(meta) -> str:
    c = meta.find("counters")
    if c is None:
        return ""
    p, b = _tok(c.findtext("packets")), _tok(c.findtext("bytes"))
    return f" packets={p} bytes={b}" if p and b and p.isdigit() and b.isdigit() else ""


def flow_line(flow) -> bytes:
    """The `conntrack -L` line of one <flow> element (BAD_FLOW if it is not one)."""
    metas = {m.get("direction"): m for m in flow.findall("meta")}
    orig, reply, ind = metas.get("original"), metas.get("reply"), metas.get("independent")
    if orig is None or reply is None:
        return BAD_FLOW
    o, r = _tuple(orig), _tuple(reply)
    if o is None or r is None or o[1] != r[1]:
        return BAD_FLOW
    parts = [o[0], o[1]]
    state = mark = zone = use = None
    unreplied = assured = False
    if ind is not None:
        timeout = ind.findtext("timeout")
        if timeout is not None:
            if not (timeout.isdigit() and len(timeout) <= 10):
                return BAD_FLOW
            parts.append(timeout)
        state = ind.findtext("state")
        if state is not None and not (_tok(state) and state.isupper()):
            return BAD_FLOW
        mark, zone, use = ind.findtext("mark"), ind.findtext("zone"), ind.findtext("use")
        for v in (mark, zone, use):
            if v is not None and not (v.isdigit() and len(v) <= 10):
                return BAD_FLOW
        unreplied = ind.find("unreplied") is not None
        assured = ind.find("assured") is not None
    if state:
        parts.append(state)

    def tup(t):
        s = f"src={t[2]} dst={t[3]}"
        return s + (f" sport={t[4]} dport={t[5]}" if t[4] else "")

    parts.append(tup(o) + _acct(orig) + (" [UNREPLIED]" if unreplied else ""))
    parts.append(tup(r) + _acct(reply) + (" [ASSURED]" if assured else ""))
    if mark is not None:
        parts.append(f"mark={mark}")
    if zone is not None:
        parts.append(f"zone={zone}")
    if use is not None:
        parts.append(f"use={use}")
    return " ".join(parts).encode()


def to_lines(blocks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """Blocks of the XML text -> blocks of `conntrack -L` lines (each ending
    in a newline). Raises XmlError on XML that cannot be read on."""
    parser = XMLPullParser(events=("start", "end"))
    out: list[bytes] = []
    depth = 0
    since_flow = 0
    root = None
    try:
        for blk in blocks:
            if b"<!" in blk:
                raise XmlError(f"{name}: a DTD, entity or comment in the XML; conntrack -o xml "
                               "writes none: not reading it (re-export with conntrack -L -o xml)")
            for at in range(0, len(blk), FEED):
                piece = blk[at:at + FEED]
                since_flow += len(piece)
                parser.feed(piece)
                for ev, el in parser.read_events():
                    if ev == "start":
                        depth += 1
                        if root is None:
                            root = el
                        continue
                    depth -= 1
                    if el.tag == "flow" and depth <= 1:
                        out.append(flow_line(el))
                        el.clear()
                        since_flow = 0
                        if root is not el:
                            root.clear()      # drop the finished flows the root still holds
                if since_flow > MAX_FLOW:
                    raise XmlError(f"{name}: more than {MAX_FLOW:,} bytes without a complete <flow>: "
                                   "not conntrack's XML (each flow is under 1 KiB)")
            if len(out) >= LINES_PER_BLOCK:
                yield b"\n".join(out) + b"\n"
                out = []
    except ParseError as e:
        raise XmlError(f"{name}: XML broken ({e}): not conntrack -o xml output, or damaged "
                       "in the middle; re-export it") from None
    try:
        parser.close()
    except ParseError:
        if depth > 1:                  # the file ends inside a flow: one truncated flow, as a cut-off line
            out.append(BAD_FLOW)
    if out:
        yield b"\n".join(out) + b"\n"
