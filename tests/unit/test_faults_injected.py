"""Faults that this host's kernel cannot show (issue 20): nf_conntrack and
ctnetlink are built in here, so "nf_conntrack_netlink not loaded" cannot be
made by unloading a module. The kernel's answers in that case are injected
where cttrace meets them (the socket and the request's reply), and the
message path is checked: one line naming the module to load."""

import errno

import pytest

from tracer.kernel import ctevents, ctnetlink


def _no_netfilter_netlink(*a, **k):
    raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")


def test_no_nfnetlink_socket(monkeypatch):
    monkeypatch.setattr(ctnetlink.socket, "socket", _no_netfilter_netlink)
    with pytest.raises(ctnetlink.NetlinkError) as e:
        ctnetlink.dump()
    assert str(e.value) == ("this kernel has no netfilter netlink (nfnetlink): load it with "
                            "modprobe nf_conntrack_netlink")
    monkeypatch.setattr(ctevents.socket, "socket", _no_netfilter_netlink)
    with pytest.raises(ctnetlink.NetlinkError, match=r"^cannot subscribe to conntrack events: Protocol "
                                                     r"not supported \(needs root; modprobe "
                                                     r"nf_conntrack_netlink\)$"):
        ctevents.CtEvents()


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOENT])
def test_ctnetlink_subsystem_missing(err):
    """nfnetlink loaded, its conntrack subsystem not: the kernel answers the
    dump request with an error message (nfnetlink_rcv_msg: EOPNOTSUPP)."""
    with pytest.raises(ctnetlink.NetlinkError) as e:
        ctnetlink.raise_for(err)
    assert str(e.value) == ("ctnetlink is not available in this kernel "
                            "(load it: modprobe nf_conntrack_netlink)")
