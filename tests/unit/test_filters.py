"""The one filter (tracer/core/filters.py) on its three shapes: raw snapshot
columns, ctnetlink rows, drop events."""

import socket

import pytest

from tracer.core.events import Drop
from tracer.core.filters import Filter
from tracer.formats.export import TextDecoder


def a4(s):
    return socket.inet_aton(s)


# ctnetlink rows: (proto, state, src, dst, dport, flags, (mark, zone), sport)
TCP_EST = (6, 3, a4("10.1.0.5"), a4("10.2.0.9"), 443, 0, (0, 0), 40000)
UDP = (17, None, a4("10.1.0.6"), a4("198.18.0.1"), 53, 0, (0, 0), 5353)
ICMP = (1, None, a4("10.3.0.1"), a4("10.2.0.9"), None, 0, (0, 0), None)


def drop(proto="udp", src="10.1.0.6", sport=5353, dst="198.18.0.1", dport=53):
    return Drop(ts=0.0, netns=1, cpu=0, family="ipv4", proto=proto, src=src, sport=sport, dst=dst,
                dport=dport, reason="table_full", ct_attached=False)


def test_inactive_filter_passes_everything():
    f = Filter()
    assert not f.active
    assert all(f.row(r) for r in (TCP_EST, UDP, ICMP)) and f.drop(drop())


@pytest.mark.parametrize("kw, want", [
    ({"protos": ["tcp"]}, [TCP_EST]),
    ({"protos": ["udp", "1"]}, [UDP, ICMP]),
    ({"states": ["established"]}, [TCP_EST]),
    ({"src": ["10.1.0.0/16"]}, [TCP_EST, UDP]),
    ({"dst": ["198.18.0.0/15"]}, [UDP]),
    ({"dports": [53]}, [UDP]),
    ({"ports": [40000]}, [TCP_EST]),          # either direction: the source port
    ({"ports": [53], "src": ["10.3.0.0/16"]}, []),
    ({"src": ["fd00::/8"]}, []),              # another family never matches
])
def test_rows(kw, want):
    f = Filter(**kw)
    assert [r for r in (TCP_EST, UDP, ICMP) if f.row(r)] == want


def test_drops():
    assert Filter(protos=["udp"], ports=[5353]).drop(drop())
    assert not Filter(protos=["tcp"]).drop(drop())
    assert not Filter(dports=[5353]).drop(drop())       # dport is the destination only
    assert Filter(ports=[5353]).drop(drop())
    assert not Filter(dst=["10.0.0.0/8"]).drop(drop())
    assert Filter(src=["10.1.0.6/32"]).drop(drop(src="10.1.0.6"))


def test_address_cache_is_bounded():
    f = Filter(src=["10.0.0.0/8"])
    for i in range(100_500):
        f.drop(drop(src=f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
    assert f.cached <= 100_001


def test_snapshot_columns_and_rows_agree():
    """The same filter gives the same answer on /proc text rows and on ctnetlink rows."""
    from tracer.formats.export import scan
    import tempfile, os
    lines = [
        "ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.5 dst=10.2.0.9 sport=40000 dport=443 "
        "src=10.2.0.9 dst=10.1.0.5 sport=443 dport=40000 [ASSURED] mark=0 zone=0 use=2",
        "ipv4     2 udp      17 29 src=10.1.0.6 dst=198.18.0.1 sport=5353 dport=53 [UNREPLIED] "
        "src=198.18.0.1 dst=10.1.0.6 sport=53 dport=5353 mark=0 zone=0 use=2",
    ]
    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        for kw in ({"protos": ["udp"]}, {"states": ["ESTABLISHED"]}, {"src": ["10.1.0.6/32"]},
                   {"dports": [443]}, {"dst": ["198.18.0.0/15"]}):
            res, dec = scan(fh.name, Filter(**kw), 1)
            assert res.cols.total == sum(Filter(**kw).row(r) for r in (TCP_EST, UDP)), kw
    finally:
        os.unlink(fh.name)
    _ = TextDecoder
