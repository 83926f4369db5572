"""`conntrack -L -o xml` exports: real ones (tests/data/known-*xml*, taken
from a kernel with tests/lab.py:known_entries()) give the same table as the
text exports; hostile or damaged XML is counted or refused in one line,
with memory bounded by one flow, not by the file."""

import gzip
from pathlib import Path

import pytest

from tests.lab import KNOWN
from tracer.core.filters import Filter
from tracer.core.snapshot import Summary
from tracer.formats import export_xml
from tracer.formats.export import InputError, scan

DATA = Path(__file__).parent.parent / "data"
XML_SAMPLES = sorted(p for p in DATA.iterdir() if p.name.startswith("known-") and "xml" in p.name)

HEAD = b'<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n'
TCP = (b'<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.0.0.1</src>'
       b'<dst>10.0.0.2</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>40000</sport>'
       b'<dport>443</dport></layer4></meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4">'
       b'<src>10.0.0.2</src><dst>10.0.0.1</dst></layer3><layer4 protonum="6" protoname="tcp">'
       b'<sport>443</sport><dport>40000</dport></layer4></meta><meta direction="independent">'
       b'<state>ESTABLISHED</state><timeout>431999</timeout><mark>0</mark><zone>3</zone><use>1</use>'
       b'<id>1</id><assured/></meta></flow>\n')
ICMP6 = (b'<flow><meta direction="original"><layer3 protonum="10" protoname="ipv6"><src>::1</src><dst>::1</dst>'
         b'</layer3><layer4 protonum="58" protoname="icmpv6"></layer4></meta><meta direction="reply">'
         b'<layer3 protonum="10" protoname="ipv6"><src>::1</src><dst>::1</dst></layer3><layer4 protonum="58" '
         b'protoname="icmpv6"></layer4></meta><meta direction="independent"><timeout>29</timeout>'
         b'<mark>0</mark><use>1</use><id>2</id></meta></flow>\n')
TAIL = b"</conntrack>\n"


def summary(path):
    res, dec = scan(str(path), Filter(), 1)
    return res, Summary.from_columns(res.cols, dec).to_dict()


def write(tmp_path, data, name="t.xml"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("path", XML_SAMPLES, ids=lambda p: p.name)
def test_real_xml_exports_give_the_known_table(path):
    res, d = summary(path)
    assert res.format == "xml" and res.malformed == 0 and res.entries == KNOWN["total"]
    for key, want in KNOWN.items():
        assert d[key] == want, key


def test_real_xml_samples_exist():
    assert len(XML_SAMPLES) >= 2, "tests/data lacks the conntrack -o xml exports"


def test_flow_fields(tmp_path):
    res, d = summary(write(tmp_path, HEAD + TCP + ICMP6 + TAIL))
    assert res.entries == 2 and res.malformed == 0 and res.format == "xml"
    assert d["by_proto_state"] == {"tcp/ESTABLISHED": 1}
    assert d["by_proto_dport"] == {"tcp/443": 1}
    assert d["by_zone"] == {"3": 1, "0": 1} and d["by_flags"] == {"ASSURED": 1}
    assert d["by_family"] == {"ipv4": 1, "ipv6": 1}


def test_gzip_xml(tmp_path):
    res, _ = summary(write(tmp_path, gzip.compress(HEAD + TCP * 3 + TAIL), "t.xml.gz"))
    assert (res.format, res.entries) == ("xml", 3)


@pytest.mark.parametrize("bad", [
    TCP.replace(b"<src>10.0.0.1</src>", b"<src>10.0.0.1 dport=22</src>"),       # forged fields
    TCP.replace(b"<src>10.0.0.1</src>", b"<src>10.0.0.1&#10;tcp 6 1 src=1.1.1.1</src>"),  # forged line
    TCP.replace(b"<state>ESTABLISHED</state>", b"<state>est ab</state>"),
    TCP.replace(b"<timeout>431999</timeout>", b"<timeout>" + b"9" * 5000 + b"</timeout>"),
    TCP.replace(b"<sport>40000</sport>", b""),                                  # half a port pair
    TCP.replace(b'protonum="6" protoname="tcp"><sport>443', b'protonum="17" protoname="udp"><sport>443'),
    TCP.replace(b'<meta direction="reply">', b'<meta direction="sideways">'),
    b"<flow></flow>\n",
], ids=range(8))
def test_a_bad_flow_is_one_malformed_line(tmp_path, bad):
    res, d = summary(write(tmp_path, HEAD + TCP + bad + ICMP6 + TAIL))
    assert (res.entries, res.malformed) == (2, 1)
    assert res.samples[0][0] == 2 and d["by_src"] == {"10.0.0.1": 1, "::1": 1}


def test_truncated_inside_a_flow_counts_it_malformed(tmp_path):
    res, _ = summary(write(tmp_path, HEAD + TCP + ICMP6[:80]))
    assert (res.entries, res.malformed) == (1, 1)


def test_truncated_between_flows_loses_nothing(tmp_path):
    res, _ = summary(write(tmp_path, HEAD + TCP + ICMP6))
    assert (res.entries, res.malformed) == (2, 0)


@pytest.mark.parametrize("data,match", [
    (b'<?xml version="1.0"?>\n<!DOCTYPE c [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>\n<conntrack>'
     + TCP + TAIL, "DTD, entity"),
    (HEAD + TCP + b"<flow><meta>" + b"<x>" * 10 + b"junk</conntrack>", "XML broken"),
    (HEAD + b"<flow>" + b"<a></a>" * 200_000 + b"</flow>" + TAIL, "without a complete <flow>"),
], ids=["entities", "broken", "huge-flow"])
def test_hostile_xml_is_refused_in_one_line(tmp_path, data, match):
    with pytest.raises(InputError, match=match) as e:
        scan(str(write(tmp_path, data)), Filter(), 1)
    assert "\n" not in str(e.value)


def test_one_big_line_of_flows(tmp_path):
    """Flows with no line break between them (a re-formatted export)."""
    res, _ = summary(write(tmp_path, HEAD + (TCP.rstrip(b"\n") * 50_000) + TAIL))
    assert (res.entries, res.malformed) == (50_000, 0)


def test_is_xml():
    assert export_xml.is_xml(HEAD) and export_xml.is_xml(b"  <conntrack>") and export_xml.is_xml(b"<flow>")
    assert not export_xml.is_xml(b"tcp 6 1 ESTABLISHED src=1.1.1.1")


def test_utf16_export_says_how_to_convert(tmp_path):
    text = "tcp      6 100 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1 [ASSURED] mark=0 use=1\n"
    for enc in ("utf-16", "utf-16-be"):
        data = text.encode(enc) if enc == "utf-16" else b"\xfe\xff" + text.encode(enc)
        with pytest.raises(InputError, match="UTF-16 text.*iconv"):
            scan(str(write(tmp_path, data, "w.txt")), Filter(), 1)
