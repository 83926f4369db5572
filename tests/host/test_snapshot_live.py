"""`cttrace snapshot` on the live kernel table, compared with ground truth:
the flows the test made, nf_conntrack_count and /proc/net/stat/nf_conntrack
of the test's own namespace."""

import socket
import subprocess
import time


from tests import lab
from tests.host.conftest import cttrace, cttrace_json
from tracer.kernel import ctnetlink
from tracer.kernel import netns
from tracer.kernel import stats as kstats


def test_known_entries_exactly(ns):
    want = lab.known_entries(ns)
    d = cttrace_json("snapshot", "--netns", ns.name)
    for key, value in want.items():
        assert d[key] == value, key
    assert d["source"] == "ctnetlink"
    assert d["table"]["count"] == ns.count() == want["total"]
    assert d["table"]["max"] == int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
    assert d["netns_inode"] == lab.os.stat(f"/run/netns/{ns.name}").st_ino


def test_proc_reader_and_netlink_reader_agree(ns):
    lab.known_entries(ns)
    a = cttrace_json("snapshot", "--netns", ns.name, "--source", "netlink")
    b = cttrace_json("snapshot", "--netns", ns.name, "--source", "proc")
    assert b["source"] == "/proc/net/nf_conntrack"
    for key in lab.KNOWN:
        assert a[key] == b[key] == lab.KNOWN[key], key


def test_netns_by_pid(ns):
    lab.known_entries(ns)
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "60"])
    try:
        time.sleep(0.3)
        d = cttrace_json("snapshot", "--netns", str(p.pid), "--proto", "udp")
        assert d["total"] == 6
        assert d["by_dport"] == {"5000": 3, "5001": 1, "5002": 1, "5003": 1}
    finally:
        p.kill()
        p.wait()


def test_many_flows_and_filters(ns):
    ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600")
    sent = ns.udp_flows(3000, first_port=20000)
    assert sent == 3000
    d = cttrace_json("snapshot", "--netns", ns.name)
    assert d["total"] == ns.count() == 3000
    assert d["by_src"] == {"127.0.0.9": 3000}
    assert d["by_flags"] == {"UNREPLIED": 3000}
    assert len(d["by_dport"]) == 3000 and set(d["by_dport"].values()) == {1}
    d = cttrace_json("snapshot", "--netns", ns.name, "--dport", "20000", "--dport", "22999", "--dport", "23000")
    assert d["total"] == 2
    d = cttrace_json("snapshot", "--netns", ns.name, "--proto", "tcp")
    assert d["total"] == 0 and d["entries_read"] == 3000


def test_kernel_counters_match_the_stat_file(ns):
    lab.known_entries(ns)
    with netns.entered(ns.name):
        st = kstats.read()
        via_netlink = ctnetlink.stats_cpu()
        glob = ctnetlink.stats_global()
    assert st.stats_source == "/proc/net/stat/nf_conntrack"
    assert glob["count"] == st.count == 13
    assert glob["max"] == st.max
    for row_proc, row_nl in zip(st.cpu, via_netlink):
        for key, value in row_nl.items():
            if key in ("found", "search_restart"):   # change with every lookup
                continue
            assert row_proc[key] == value, key


def test_table_full_drops_equal_the_kernel_counter(ns):
    """Lower the (global) nf_conntrack_max, make flows until the table is
    full, and check the snapshot's drop counter against the EPERMs seen."""
    path = "/proc/sys/net/netfilter/nf_conntrack_max"
    old = open(path).read().strip()
    host_count = int(open("/proc/sys/net/netfilter/nf_conntrack_count").read())
    before = cttrace_json("snapshot", "--netns", ns.name)["table"]["stats"]
    eperm = 0
    try:
        with open(path, "w") as f:
            f.write(str(max(host_count, 100) + 50))
        with netns.entered(ns.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for port in range(30000, 30300):
            try:
                s.sendto(b"x", ("127.0.0.1", port))
            except PermissionError:
                eperm += 1
        s.close()
        d = cttrace_json("snapshot", "--netns", ns.name)
    finally:
        with open(path, "w") as f:
            f.write(old)
    after = d["table"]["stats"]
    assert eperm > 0
    assert after["drop"] - before["drop"] == eperm
    # A full table first tries to evict an unassured entry (early_drop);
    # each success admits one more flow without growing the table.
    evicted = after["early_drop"] - before["early_drop"]
    assert d["total"] == 300 - eperm - evicted == d["table"]["count"]


def test_non_root_gets_one_line(ns):
    r = cttrace("snapshot", check=False, user="65534")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "root" in r.stderr


def test_no_namespace_left_behind():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [l for l in out.splitlines() if l.startswith(lab.PREFIX)]


def test_containers_are_attributed():
    L = lab
    L.lab_down("ctlabsn-")
    with L.Lab(containers=2, prefix="ctlabsn-") as lb:
        lb.tcp_established(lb.containers[0], 3)
        lb.udp_flows(lb.containers[1], 4)
        d = cttrace_json("snapshot", "--netns", lb.node)
        for c in lb.containers:
            assert d["containers"][lb.container_ip(c)] == c
