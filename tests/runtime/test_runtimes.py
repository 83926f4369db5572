"""Containers and pods of real runtimes named exactly: per container and per
pod, cttrace's entries and drops (top, drops, serve, capture + report)
equal that container's own generator's flows and refusals, and the
kernel's table and counters.

One node namespace runs a private dockerd, containerd and Podman
(tests/runtimes.py). Who sends what (UDP flows, one source port each):

  Docker   d-bridge (default bridge), d-side (--network container:d-bridge:
           counts as d-bridge, the namespace's owner), d-user (a user-defined
           network), d-host (--network host: the node itself, named as the
           node, never as a container), d-pub (publishes 18080/udp: the
           client's flows to it are DNATed, d-pub is their destination side),
           d-v6 (an IPv6-enabled user network: IPv6 flows)
  containerd  shop/api-0 and shop/db-0 (sandbox + app container joining its
           namespace), kube-system/agent-0 (hostNetwork: the node)
  Podman   p-web (rootful, netavark; publishes 18081/udp, which only
           netavark's DNAT rules tell: the client's flows to it name p-web
           as their destination side); rootless (user ctrt-rl): rl-net (a user
           network: its entries are in the user's rootless namespace) and
           rl-slirp (slirp4netns: the node sees slirp4netns' sockets)
"""

import gzip
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter

import pytest

from tests import runtimes as R
from tests.host.conftest import CTTRACE, wait_ready
from tracer.kernel.attribution import collect

# flows each one sends: all different, so that a count can only match its owner
N_RL = 23                            # flows of each rootless Podman container
PODMAN_PUB = 18081                   # p-web's published port
N = {"d-bridge": 11, "d-side": 13, "d-user": 12, "d-host": 14, "d-pub": 15, "shop/api-0": 16,
     "shop/db-0": 17, "kube-system/agent-0": 18, "p-web": 19, "d-v6": 21}


@pytest.fixture(scope="module")
def world():
    base = R.tmpdir()
    before = R.host_state()
    fresh = R.fresh_paths()
    R.node_up()
    fs = R.rootfs(base / "rootfs")
    tar = base / "rootfs.tar"
    R.sh("tar", "-C", fs, "-cf", tar, ".")
    w = {"skip": {}, "who": {}, "base": base}
    rts = []
    try:
        t0 = time.monotonic()
        try:
            d = R.Docker(base)
            rts.append(d)
            d.load(tar)
            d.cli("network", "create", "--subnet", R.USER_SUBNET,
                  "-o", f"com.docker.network.bridge.name={R.USER_NET}", "ctnet")
            w["docker"] = d
            w["who"]["d-bridge"] = d.run("d-bridge")
            w["who"]["d-side"] = d.run("d-side", "--network", "container:d-bridge")
            w["who"]["d-user"] = d.run("d-user", "--network", "ctnet")
            w["who"]["d-host"] = d.run("d-host", "--network", "host")
            w["who"]["d-pub"] = d.run("d-pub", "-p", "18080:80/udp")
            try:                             # IPv6: a dual-stack user network
                if not os.path.isdir("/proc/sys/net/ipv6"):
                    raise R.RuntimeUnavailable("this kernel has no IPv6 (/proc/sys/net/ipv6 is missing)")
                d.cli("network", "create", "--ipv6", "--subnet", R.V6_SUBNET4, "--subnet", R.V6_SUBNET,
                      "-o", f"com.docker.network.bridge.name={R.V6_NET}", "ctnet6")
                w["who"]["d-v6"] = d.run("d-v6", "--network", "ctnet6")
                R.wait_dad()
            except (RuntimeError, R.RuntimeUnavailable) as e:
                w["skip"]["docker-ipv6"] = str(e)
        except R.RuntimeUnavailable as e:
            w["skip"]["docker"] = str(e)
        try:
            c = R.Containerd(base, fs)
            rts.append(c)
            w["containerd"] = c
            w["who"]["shop/api-0"] = c.pod("shop", "api-0", "198.19.254.10", ["api"])
            w["who"]["shop/db-0"] = c.pod("shop", "db-0", "198.19.254.11", ["db", "backup"])
            w["who"]["kube-system/agent-0"] = c.pod("kube-system", "agent-0", None, ["agent"],
                                                    host_network=True)
        except R.RuntimeUnavailable as e:
            w["skip"]["containerd"] = str(e)
        try:
            p = R.Podman(base)
            rts.append(p)
            p.load(tar)
            w["podman"] = p
            # a published port: netavark writes only DNAT rules (no state file names it)
            w["who"]["p-web"] = p.run("p-web", "-p", f"{PODMAN_PUB}:80/udp")
        except R.RuntimeUnavailable as e:
            w["skip"]["podman"] = str(e)
        try:
            rl = R.RootlessPodman(base, tar)
            rts.append(rl)
            w["rootless"] = rl
            w["who"]["rl-net"] = rl.run("rl-net", "rlnet")
            w["who"]["rl-slirp"] = rl.run("rl-slirp", "slirp4netns")
        except R.RuntimeUnavailable as e:
            w["skip"]["rootless"] = str(e)
        w["setup_s"] = time.monotonic() - t0
        yield w
    finally:
        for r in reversed(rts):
            try:
                r.stop()
            except Exception as e:          # keep stopping the others
                print(f"stopping {type(r).__name__}: {e}")
        R.node_down()
        R.sh("rm", "-rf", base, check=False)
        R.remove_fresh(fresh)
        assert R.host_state() == before, "the runtimes left something on the host"


def need(world, runtime):
    if runtime in world["skip"]:
        pytest.skip(f"{runtime} cannot start here: {world['skip'][runtime]}")


# where each one's flows come from: (netns path, source address, destination)
def sender(world, name):
    x = world["who"][name]
    if name in ("d-host", "kube-system/agent-0"):
        return f"/run/netns/{R.NODE}", R.UP_NODE, R.UP_CLIENT
    if name == "d-pub":              # the client hits the published port
        return f"/run/netns/{R.CLIENT}", R.UP_CLIENT, R.UP_NODE
    if name.startswith("shop/"):
        return x["netns"], x["ip"], R.POD_GW
    if name == "d-side":
        return f"/proc/{x['pid']}/ns/net", world["who"]["d-bridge"]["ips"][0], R.DOCKER_GW
    if name == "d-v6":
        return f"/proc/{x['pid']}/ns/net", x["ip6s"][0], R.V6_GW
    gw = {"d-bridge": R.DOCKER_GW, "d-user": R.USER_GW, "p-web": R.PODMAN_GW}[name]
    return f"/proc/{x['pid']}/ns/net", x["ips"][0], gw


def send(world, name, n, first_port):
    path, src, dst = sender(world, name)
    if name == "d-pub":
        return R.udp_flows(path, src, dst, n, first_port, dport=18080)
    return R.udp_flows(path, src, dst, n, first_port)


# the name cttrace must give each sender's flows, source side
EXPECT = {"d-bridge": "d-bridge", "d-side": "d-bridge", "d-user": "d-user", "d-host": R.NODE,
          "d-pub": R.CLIENT, "shop/api-0": "shop/api-0", "shop/db-0": "shop/db-0",
          "kube-system/agent-0": R.NODE, "p-web": "p-web", "d-v6": "d-v6"}


def run_json(*args, timeout=60):
    r = subprocess.run([CTTRACE, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI installs every runtime (scripts/setup --test); "
                    "a developer's machine may lack one")
def test_every_runtime_starts_in_ci(world):
    """In CI no runtime may be skipped: each test above checks a runtime
    only where it started, so a runtime failing to start would silently
    check less."""
    assert not {k: v for k, v in world["skip"].items() if k in ("docker", "containerd", "podman")}, world["skip"]
    assert {"d-pub", "p-web", "shop/api-0"} <= set(world["who"])


def test_entries_named_by_container_and_pod(world):
    present = [n for n in N if n in world["who"]]
    assert present, f"no runtime could start: {world['skip']}"
    if "docker" in world and os.path.isdir("/proc/sys/net/ipv6"):   # never skipped silently
        assert "d-v6" in world["who"], f"Docker could not make an IPv6 network: {world['skip']}"
    for i, name in enumerate(present):
        send(world, name, N[name], 20000 + 100 * i)
    # (an IPv6 flow's first packet waits for neighbour discovery: milliseconds)
    deadline = time.monotonic() + 3
    while True:
        by_src = Counter(r["src"] for r in R.node_entries())
        if all(by_src[sender(world, n)[1]] >= N[n] for n in present) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    want: Counter = Counter()
    for name in present:
        want[EXPECT[name]] += N[name]
    # the kernel's own table agrees with the generators (the ground truth)
    for name in present:
        src = sender(world, name)[1]
        assert by_src[src] >= N[name], (name, src, by_src)
    for group in ("container", "pod"):
        f = run_json("top", "--netns", R.NODE, "--json", "--once", "-g", group, "-t", "100",
                     "--interval", "0.5")[-1]
        rows = {r["key"]: r for r in f["top"]}
        for name, n in want.items():
            assert name in rows, (group, name, sorted(rows))
            # all of the namespace's sources count: the generators' flows and
            # whatever else the kernel holds from them (compared below)
            srcs = {sender(world, x)[1] for x in present if EXPECT[x] == name}
            if name == R.NODE:       # the node's other addresses (its bridges' IGMP reports)
                srcs |= {R.DOCKER_GW, R.USER_GW, R.POD_GW, R.PODMAN_GW, R.V6_GW4, R.V6_GW}
            assert rows[name]["entries"] == sum(by_src[s] for s in srcs), (group, name, rows[name])
            assert rows[name]["entries"] >= n
        if "d-pub" in world["who"]:
            pub = rows["d-pub"]
            assert pub["entries"] == 0 and pub["entries_as_destination"] == N["d-pub"]
            dn = {d["dst"]: d for d in f["top_dnat_destinations"]}
            assert dn[world["who"]["d-pub"]["ips"][0]] == {
                "dst": world["who"]["d-pub"]["ips"][0], "entries": N["d-pub"], "container": "d-pub",
                "side": "destination"}
        names = set(rows)
        for gone in ("d-side", "d-host", "kube-system/agent-0"):
            assert gone not in names     # never named after a container sharing a namespace


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text, name, **labels):
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(tmp, *args):
    ready = tmp / f"ready-{args[0]}"
    out = open(tmp / f"out-{args[0]}", "w+")
    p = subprocess.Popen([CTTRACE, *args, "--ready-file", str(ready)], stdout=out,
                         stderr=subprocess.PIPE, text=True)
    wait_ready(p, ready)
    return p, out


def stop(p, out):
    p.send_signal(signal.SIGINT)
    p.wait(60)
    out.seek(0)
    return out.read()


SNAT_PORTS = (20000, 20001)
CLASH_FLOWS, PUB_FLOWS = 40, 25


def clash_flows(world) -> tuple[int, int]:
    """SNAT port exhaustion from a real container: in the node, a MASQUERADE
    rule ahead of Docker's maps d-user's flows out of up0 onto two ports;
    CLASH_FLOWS new UDP flows to one destination (the client): the first
    take the two ports, the others clash at confirm (insert_failed). ->
    (the kernel's insert_failed delta, d-user's refused flows: sent less
    those the node's table holds)."""
    x = world["who"]["d-user"]
    rule = ["POSTROUTING", "-s", f"{x['ips'][0]}/32", "-o", "up0", "-p", "udp", "-j", "MASQUERADE",
            "--to-ports", f"{SNAT_PORTS[0]}-{SNAT_PORTS[1]}"]
    R.in_node("iptables", "-t", "nat", "-I", *rule[:1], "1", *rule[1:])
    try:
        before = R.node_stats()
        ports = R.udp_flows(f"/proc/{x['pid']}/ns/net", x["ips"][0], R.UP_CLIENT, CLASH_FLOWS, 45000)
        time.sleep(0.3)
        after = R.node_stats()
    finally:
        R.in_node("iptables", "-t", "nat", "-D", *rule)
    assert after["drop"] - before["drop"] == after["insert_failed"] - before["insert_failed"]  # no other cause
    held = [r for r in R.node_entries() if r["src"] == x["ips"][0] and r["sport"] in ports]
    assert len(held) == len(SNAT_PORTS), held        # one entry per SNAT port, the others refused
    return after["insert_failed"] - before["insert_failed"], len(ports) - len(held)


def test_drops_named_per_container_in_top_drops_serve_and_report(world, tmp_path):
    """Per container: table-full drops (every sender), clash drops
    (d-user's SNAT exhaustion) and the destination side of drops sent to
    a published port (the client's flows to d-pub's), in one run of top,
    drops, serve and capture."""
    senders = [n for n in ("d-bridge", "d-user", "shop/api-0", "shop/db-0", "p-web", "d-host", "d-v6")
               if n in world["who"]]
    assert senders, f"no runtime could start: {world['skip']}"
    port = free_port()
    procs = [start(tmp_path, "top", "--netns", R.NODE, "--json", "--interval", "0.5", "-t", "100"),
             start(tmp_path, "drops", "--netns", R.NODE, "--json"),
             start(tmp_path, "serve", "--netns", R.NODE, "--listen", f"127.0.0.1:{port}",
                   "--interval", "0.5", "--top-k", "50"),
             start(tmp_path, "capture", "--netns", R.NODE, "-o", str(tmp_path / "c.gz"), "-d", "120s")]
    truth: Counter = Counter()               # table-full drops by sender
    clashes = refused = pub = ppub = 0
    try:
        if "d-user" in world["who"]:
            clashes, refused = clash_flows(world)
        with R.Limit(admit=0) as lim:
            for i, name in enumerate(senders):
                # full again before each sender: entries made earlier in this
                # long test (UDP: 30 s) expire, and the room they leave would
                # admit the last senders' flows
                lim.refill()
                before = R.node_stats()
                send(world, name, 30 + i, 40000 + 100 * i)
                time.sleep(0.3)
                after = R.node_stats()
                truth[EXPECT[name]] += (after["drop"] - after["insert_failed"]) - \
                    (before["drop"] - before["insert_failed"])
            if "d-pub" in world["who"]:      # inbound: the client hits the published port
                lim.refill()
                before = R.node_stats()
                pub_ports = R.udp_flows(f"/run/netns/{R.CLIENT}", R.UP_CLIENT, R.UP_NODE, PUB_FLOWS,
                                        46000, dport=18080)
                time.sleep(0.3)
                after = R.node_stats()
                pub = (after["drop"] - after["insert_failed"]) - (before["drop"] - before["insert_failed"])
                held = [r for r in R.node_entries() if r["src"] == R.UP_CLIENT and r["sport"] in pub_ports]
            if "p-web" in world["who"]:      # and p-web's, which only netavark's DNAT rules tell
                lim.refill()
                before = R.node_stats()
                ppub_ports = R.udp_flows(f"/run/netns/{R.CLIENT}", R.UP_CLIENT, R.UP_NODE, PUB_FLOWS,
                                         47000, dport=PODMAN_PUB)
                time.sleep(0.3)
                after = R.node_stats()
                ppub = (after["drop"] - after["insert_failed"]) - (before["drop"] - before["insert_failed"])
                pheld = [r for r in R.node_entries() if r["src"] == R.UP_CLIENT and r["sport"] in ppub_ports]
        time.sleep(2.0)                      # the pump and serve's interval
        metrics = scrape(port)
    finally:
        outs = [stop(p, o) for p, o in procs]
    assert all(truth[EXPECT[n]] > 0 for n in senders), truth
    if "d-user" in world["who"]:
        assert clashes == refused > 0, (clashes, refused)
    if "d-pub" in world["who"]:
        assert pub == PUB_FLOWS - len(held) > 0, (pub, held)   # the client's flows the table refused
    if "p-web" in world["who"]:
        assert ppub == PUB_FLOWS - len(pheld) > 0, (ppub, pheld)
    srcs = {EXPECT[n]: sender(world, n)[1] for n in senders}
    # top: per source, exact, named
    clash = Counter({"d-user": clashes})
    last = json.loads(outs[0].splitlines()[-1])
    tops = {s["src"]: s for s in last["top_sources"]}
    for name, src in srcs.items():
        assert tops[src]["drops_total"] == truth[name] + clash[name], (name, tops.get(src))
        assert tops[src]["container"] == name
    # drops: every drop of a sender's address carries its name, by reason
    drops = [json.loads(l) for l in outs[1].splitlines() if l.strip()]
    for name, src in srcs.items():
        mine = [d for d in drops if d["src"] == src]
        assert Counter(d["reason"] for d in mine) == Counter(
            {"table_full": truth[name], "insert_failed": clash[name]}) - Counter(), name
        assert {d["container"] for d in mine} == {name}
        assert {d["dst_container"] for d in mine} == {None}     # no published port: no destination side
    for d in drops:
        if d["reason"] == "insert_failed":   # after SNAT: the packet as dropped had the node's address
            assert d["translated"]["src"] == R.UP_NODE and d["translated"]["sport"] in SNAT_PORTS, d
    # the client's drops to d-pub's published port: the source is the
    # client, the destination side d-pub, each named apart
    to_pub = [d for d in drops if d["dport"] == 18080 and d["src"] == R.UP_CLIENT]
    if "d-pub" in world["who"]:
        assert len(to_pub) == pub
        assert {(d["container"], d["dst_container"], d["reason"]) for d in to_pub} == {
            (R.CLIENT, "d-pub", "table_full")}
        assert metric(metrics, "cttrace_destination_drops_total", destination="udp/18080",
                      container="d-pub") == [pub]
    to_ppub = [d for d in drops if d["dport"] == PODMAN_PUB and d["src"] == R.UP_CLIENT]
    if "p-web" in world["who"]:
        assert len(to_ppub) == ppub
        assert {(d["container"], d["dst_container"], d["reason"]) for d in to_ppub} == {
            (R.CLIENT, "p-web", "table_full")}
        assert metric(metrics, "cttrace_destination_drops_total", destination=f"udp/{PODMAN_PUB}",
                      container="p-web") == [ppub]
    # serve: Kubernetes-style labels, exact counts
    for name, src in srcs.items():
        m = world["who"].get(name, {})
        lab = {"source": src, "namespace": m.get("namespace", ""), "pod": m.get("pod", "")}
        if name.startswith("shop/"):
            lab["container"] = m["containers"][0] if len(m["containers"]) == 1 else ""
        else:
            lab["container"] = name
        assert metric(metrics, "cttrace_source_drops_total", **lab) == [truth[name] + clash[name]], (name, lab)
    # capture + report
    rep = run_json("report", str(tmp_path / "c.gz"), "--json")[0]
    by = {r["src"]: r for r in rep["top_sources_by_drops"]}
    for name, src in srcs.items():
        assert by[src]["drops"] == truth[name] + clash[name] and by[src]["container"] == name
    cts = {r["name"]: r for r in rep["drops_by_container"]}
    for name in srcs.keys() - {R.NODE}:      # (the node's other addresses' drops join its row)
        assert cts[name]["events_by_reason"] == dict(Counter(
            {"table_full": truth[name], "insert_failed": clash[name]}) - Counter()), cts[name]
    want = [{"container": "d-pub", "drops": pub, "ports": ["udp/18080"],
             "events_by_reason": {"table_full": pub}}] if "d-pub" in world["who"] else []
    if "p-web" in world["who"]:
        want.append({"container": "p-web", "drops": ppub, "ports": [f"udp/{PODMAN_PUB}"],
                     "events_by_reason": {"table_full": ppub}})
    key = lambda r: (-r["drops"], r["container"])      # noqa: E731
    assert sorted(rep["drops_by_destination"], key=key) == sorted(want, key=key)


def test_churn_every_drop_keeps_its_container_name(world, tmp_path):
    """30 short-lived containers in a 60 s capture: each starts, sends into a
    full table, and is removed; every drop and source in the report keeps
    its container's name."""
    need(world, "docker")
    d = world["docker"]
    p, out = start(tmp_path, "capture", "--netns", R.NODE, "-o", str(tmp_path / "churn.gz"), "-d", "60s")
    truth: dict[str, int] = {}
    try:
        with R.Limit(admit=0) as lim:
            t0 = time.monotonic()
            for i in range(30):
                name = f"job-{i}"
                # a fixed address each: Docker hands a freed address to the
                # next container, and the report is by address
                x = d.run(name, "--network", "ctnet", "--ip", f"198.19.253.{100 + i}")
                lim.refill()
                before = R.node_stats()
                R.udp_flows(f"/proc/{x['pid']}/ns/net", x["ips"][0], R.USER_GW, 5 + i % 7, 30000)
                time.sleep(0.5)
                after = R.node_stats()
                truth[x["ips"][0]] = (name, (after["drop"] - after["insert_failed"]) -
                                      (before["drop"] - before["insert_failed"]))
                d.cli("rm", "-f", name)
                # spread over the capture: about 1.8 s per container
                time.sleep(max(0.0, t0 + 1.8 * (i + 1) - time.monotonic()))
    finally:
        p.wait(120)
    rep = run_json("report", str(tmp_path / "churn.gz"), "--json", "-t", "100")[0]
    by = {r["src"]: r for r in rep["top_sources_by_drops"]}
    for ip, (name, n) in truth.items():
        assert n > 0
        assert by[ip]["container"] == name, (ip, by[ip])
        assert by[ip]["drops"] == n
    # every drop record is named
    recs = [json.loads(l) for l in gzip.open(tmp_path / "churn.gz", "rt") if l.strip()]
    drops = [r for r in recs if r.get("k") == "drop"]
    end = [r for r in recs if r.get("k") == "end"][-1]
    assert len(drops) == sum(n for _, n in truth.values())
    named = sum(1 for r in drops if r.get("container") == truth[r["src"]][0])
    late = sum(1 for r in drops if r.get("container") is None and end["names"].get(r["src"]) == truth[r["src"]][0])
    assert named + late == len(drops), (named, late, len(drops))


def test_rename_and_new_address_are_followed(world):
    """`docker rename`, `podman rename` and a container given a new address
    (reconnected): the next refresh names the address by the new name, and
    the new address by the container."""
    n0 = collect()
    for runtime, name in (("docker", "d-user"), ("podman", "p-web")):
        if runtime in world:
            ip = world["who"][name]["ips"][0]
            assert n0.by_ip[ip] == name
            world[runtime].cli("rename", name, name + "-2")
            assert collect().by_ip[ip] == name + "-2"
    if "docker" in world:
        d = world["docker"]
        ip = world["who"]["d-user"]["ips"][0]
        d.cli("network", "disconnect", "ctnet", "d-user-2")
        d.cli("network", "connect", "--ip", "198.19.253.77", "ctnet", "d-user-2")
        n = collect()
        assert n.by_ip["198.19.253.77"] == "d-user-2" and ip not in n.by_ip
    if "docker" not in world and "podman" not in world:
        pytest.skip(f"neither Docker nor Podman could start: {world['skip']}")


def test_rootless_podman_named_where_its_entries_are(world):
    """Rootless Podman: rl-net's flows make entries in its user's rootless
    namespace (netavark's NAT there), named rl-net when cttrace follows
    that namespace; rl-slirp's flows leave through slirp4netns' sockets in
    the node: the node's own entries, named as the node, never rl-slirp."""
    need(world, "rootless")
    rl, x, sl = world["rootless"], world["who"]["rl-net"], world["who"]["rl-slirp"]
    n = collect()
    assert n.by_ip[x["ips"][0]] == "rl-net" and n.meta["rl-net"]["runtime"] == "podman-rootless"
    assert n.by_netns[os.stat(f"/proc/{x['pid']}/ns/net").st_ino] == "rl-net"
    assert n.by_netns[os.stat(f"/proc/{sl['pid']}/ns/net").st_ino] == "rl-slirp"
    # the rootless namespace: the one aardvark-dns (the network's DNS) runs in
    (dns,) = rl.pids("aardvark-dns")
    R.udp_flows(f"/proc/{x['pid']}/ns/net", x["ips"][0], R.RL_GW, N_RL, 21000)
    time.sleep(0.3)
    held = R.sh("nsenter", "-t", dns, "-n", "conntrack", "-L").stdout
    # entries whose original source is rl-net's address (the first src= of a line)
    truth = sum(1 for l in held.splitlines() if l.split("src=", 1)[-1].split(" ", 1)[0] == x["ips"][0])
    assert truth >= N_RL, held
    f = run_json("top", "--netns", str(dns), "--json", "--once", "-g", "container", "-t", "50",
                 "--interval", "0.5")[-1]
    rows = {r["key"]: r for r in f["top"]}
    assert rows["rl-net"]["entries"] == truth, rows
    # slirp4netns: the node's own sockets
    R.udp_flows(f"/proc/{sl['pid']}/ns/net", sl["ips"][0], R.UP_CLIENT, N_RL, 21100)
    deadline = time.monotonic() + 3
    while sum(1 for r in R.node_entries() if (r["src"], r["dst"], r["dport"]) == (R.UP_NODE, R.UP_CLIENT, 9)) \
            < N_RL and time.monotonic() < deadline:
        time.sleep(0.1)
    f = run_json("top", "--netns", R.NODE, "--json", "--once", "-g", "src", "-t", "100", "--interval", "0.5")[-1]
    tops = {s["src"]: s for s in f["top_sources"]}
    assert tops[R.UP_NODE]["container"] == R.NODE and tops[R.UP_NODE]["entries"] >= N_RL, tops.get(R.UP_NODE)
    assert sl["ips"][0] not in tops and "rl-slirp" not in {s["container"] for s in tops.values()}
