"""`doctor --file` on real exports of a lab table with known content:
`conntrack -L`, `conntrack -L -o extended`, `conntrack -L -o xml` and
/proc/net/nf_conntrack (where
the kernel has it), read inside a namespace the test fills itself. Every
figure is compared with what the test's own generator made:

- 300 UDP flows 127.0.0.9 -> 127.0.0.1:5000, sent IDLE seconds before the
  export (one socket each, nothing answers: UNREPLIED);
- 200 UDP flows 127.0.0.10 -> 127.0.0.1:6000, sent just before it;
- 20 TCP connections 127.0.0.11 -> 127.0.0.1:8080, open (ESTABLISHED, ASSURED).

With nf_conntrack_udp_timeout = T in the namespace (given to doctor as the
`sysctl net.netfilter` output of that namespace)."""

import json
import os
import socket
import subprocess
import time

import pytest

from tests import lab as L
from tests.host.conftest import CTTRACE
from tracer.kernel import netns

T = 100
IDLE = 15
A, B, TCP = 300, 200, 20


def _udp(ns, n, src, dport, first_sport):
    with netns.entered(ns.name):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for i, s in enumerate(socks):
        s.bind((src, first_sport + i))
        s.sendto(b"x", ("127.0.0.1", dport))
        s.close()


@pytest.fixture
def exports(tmp_path):
    with L.Netns("exp") as ns:
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", str(T))
        with netns.entered(ns.name):
            lst = ns.keep(socket.socket())
            lst.bind(("127.0.0.1", 8080))
            lst.listen(TCP)
            for i in range(TCP):
                c = ns.keep(socket.socket())
                c.bind(("127.0.0.11", 30000 + i))
                c.connect(("127.0.0.1", 8080))
                ns.keep(lst.accept()[0])
        _udp(ns, A, "127.0.0.9", 5000, 10000)
        t_a = time.monotonic()
        time.sleep(IDLE)
        _udp(ns, B, "127.0.0.10", 6000, 20000)
        time.sleep(0.2)
        files = {}
        for name, cmd in (("conntrack -L", "conntrack -L"),
                          ("conntrack -L -o extended", "conntrack -L -o extended"),
                          ("conntrack -L -o xml", "conntrack -L -o xml"),
                          ("conntrack -L -o xml,extended,id", "conntrack -L -o xml,extended,id"),
                          ("/proc/net/nf_conntrack", "cat /proc/net/nf_conntrack")):
            if name.startswith("/proc") and not os.path.exists("/proc/net/nf_conntrack"):
                continue       # a kernel without CONFIG_NF_CONNTRACK_PROCFS
            p = tmp_path / (name.replace(" ", "_").replace("/", "_") + ".txt")
            p.write_text(ns.run("sh", "-c", cmd).stdout)
            files[name] = p
        idle_at_export = time.monotonic() - t_a
        settings = tmp_path / "sysctls.txt"
        settings.write_text(ns.run("sysctl", "net.netfilter").stdout)
        count = ns.count()
    yield files, settings, idle_at_export, count


def test_doctor_file_figures_equal_the_generator(exports):
    files, settings, idle, count = exports
    assert IDLE <= idle < 60 - 5
    assert count == A + B + TCP
    assert {"conntrack -L", "conntrack -L -o extended", "conntrack -L -o xml"} <= set(files)
    for name, path in files.items():
        r = subprocess.run([CTTRACE, "doctor", "--file", str(path), "--sysctls", str(settings), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (name, r.stderr)
        out = json.loads(r.stdout)
        st, a = out["state"], out["state"]["ages"]
        assert st["total"] == A + B + TCP and st["malformed"] == 0, name
        assert "udp_timeout" not in st["assumed"] and st["sysctls"]["udp_timeout"] == T, name
        # entries per idle bucket: the first batch 10 s-1 min, the second under 10 s
        udp = a["idle"]["udp/UNREPLIED"]
        assert udp["timeout"] == T and udp["sysctl"] == "udp_timeout"
        assert {k: v for k, v in udp["buckets"].items() if v} == {"0s-10s": B, "10s-1m": A}, name
        # the 20 open connections (made before the first batch, silent since):
        # ESTABLISHED and ASSURED, idle 10 s-1 min
        est = a["idle"]["tcp/ESTABLISHED"]
        assert {k: v for k, v in est["buckets"].items() if v} == {"10s-1m": TCP}, name
        assert a["assured"] == TCP and a["total"] == A + B + TCP, name
        # expiring unless refreshed: none within a minute (T - IDLE > 60), all UDP within 10
        assert a["schedule"]["udp/UNREPLIED"] == {"10s": 0, "1m": 0, "10m": A + B, "total": A + B}
        # a 10 s UDP timeout frees exactly the first batch: its source and port
        c = next(c for c in a["candidates"] if c["sysctl"] == "udp_timeout" and c["proposed"] == 10)
        assert c["freed"] == A and c["of"] == A + B, name
        assert c["by_app"] == [{"src": "127.0.0.9", "dport": "udp/5000", "entries": A}], name
        found = {f["id"]: f for f in out["findings"]}
        assert f"would free {A:,} entries now" in found["shorter_udp_timeout"]["message"]
        assert f"udp/5000: {A:,} entries from 1 source" in found["shorter_udp_timeout"]["evidence"]
        assert found["shorter_udp_timeout"]["cuts"][0]["top_sources"] == [{"src": "127.0.0.9", "entries": A}]
        assert "no rates" in found["export_no_rates"]["message"]
        assert "time_to_full" not in found and "not_filling" not in found
        # the limit from the namespace's sysctls: the (global) nf_conntrack_max
        assert st["max"] == int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
    # the text view of one of them
    r = subprocess.run([CTTRACE, "doctor", "--file", str(files["conntrack -L"]), "--sysctls", str(settings)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cttrace doctor: export" in r.stdout and "shorter_udp_timeout" in r.stdout


def test_snapshot_reads_every_export_format_alike(exports):
    """snapshot --file gives the same columns from the text, extended, XML and
    /proc exports of one table, and the namespace's own count."""
    files, _, _, count = exports
    seen = {}
    for name, path in files.items():
        r = subprocess.run([CTTRACE, "snapshot", "--file", str(path), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (name, r.stderr)
        out = json.loads(r.stdout)
        assert out["format"] == ("xml" if "xml" in name else "text"), name
        assert out["total"] == count and out["malformed"] == 0, name
        seen[name] = {k: v for k, v in out.items() if k.startswith("by_")}
    first = seen.pop("conntrack -L")
    assert first["by_proto_dport"] == {"udp/5000": A, "udp/6000": B, "tcp/8080": TCP}
    for name, cols in seen.items():
        assert cols == first, name
