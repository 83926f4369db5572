"""The tracing session with a fake backend: filtering and attribution of
drops, the stop flag on signals (never an exception inside a callback),
the ready-file, and one close path that detaches whatever was opened."""

import os
import signal
import time

import pytest

from tracer.core.events import Drop
from tracer.core.filters import Filter
from tracer.live.session import Options, SessionError, TracingSession


def d(src="10.0.0.1", netns=1, reason="table_full", proto="udp", dport=53):
    return Drop(ts=time.time(), netns=netns, cpu=0, family="ipv4", proto=proto, src=src, sport=1000,
                dst="198.18.0.1", dport=dport, reason=reason, ct_attached=False)


@pytest.fixture
def session(make_session):
    return make_session


def test_drops_are_filtered_attributed_and_counted(tmp_path, fake_backend, session):
    be = fake_backend([[d(), d(src="10.0.0.2", netns=42), d(reason="rule"), d(proto="tcp")]])
    ready = tmp_path / "ready"
    with session(be, reasons=("table_full",), flt=Filter(protos=["udp"]), ready_file=str(ready)) as s:
        assert ready.read_text().strip() == str(os.getpid())
        got = s.pump()
        assert [(x.src, x.container) for x in got] == [("10.0.0.1", "web-1"), ("10.0.0.2", "netns-42")]
        assert [x.dst_container for x in got] == [None, None]
        assert s.drops_seen == 2 and len(s.recent) == 2
        assert s.counters.drops_by_src(1) == {"10.0.0.1": 3}
    assert be.closed == 1


def test_a_drop_sent_to_a_published_port_names_its_destination_side(fake_backend, session):
    with session(fake_backend([[d(proto="tcp", dport=8080, src="10.0.0.7")]])) as s:
        (x,) = s.pump()
        assert (x.container, x.dst_container) == (None, "web-2")


def test_only_the_followed_namespace(tmp_path, fake_backend, session):
    be = fake_backend([[d(netns=1), d(netns=2)]])
    with session(be, only_followed_netns=True) as s:
        s.inum = 2
        assert [x.netns for x in s.pump()] == [2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_set_the_flag_and_wait_returns(sig, fake_backend, session):
    be = fake_backend()
    be.on_poll = lambda: os.kill(os.getpid(), sig)       # as if inside BCC's callback
    old = signal.getsignal(sig)
    with session(be) as s:
        t0 = time.monotonic()
        s.wait(30)
        assert s.stopping and time.monotonic() - t0 < 1
    assert signal.getsignal(sig) == old                  # handlers restored


def test_a_failing_backend_is_one_error_and_nothing_stays_open(fake_backend, fake_names):
    be = fake_backend(fail="cannot attach to X: no such function")
    names = fake_names
    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SessionError, match="cannot attach to X"):
        TracingSession("test", Options(), backend=be, names=names).__enter__()
    assert be.closed == 1 and names.stopped and signal.getsignal(signal.SIGTERM) == old


def test_unknown_namespace_is_a_session_error(fake_backend, fake_names):
    with pytest.raises(SessionError, match="nope-not-here"):
        TracingSession("test", Options(netns="nope-not-here"), backend=fake_backend(),
                       names=fake_names).__enter__()


def test_close_is_idempotent(fake_backend, session):
    be = fake_backend()
    s = session(be).__enter__()
    s.close()
    s.close()
    assert be.closed == 1
