"""Container attribution on recorded host state trees (no root needed)."""

import json
import os

from tracer.kernel import attribution as A

DOCKER_ID = "a" * 64
POD_ID = "b" * 64
CTR_ID = "c" * 64


def tree(tmp_path):
    """A host with one Docker container, one Kubernetes pod, a named netns
    and a plain process, laid out as the runtimes lay out their state."""
    docker = tmp_path / "docker"
    (docker / "containers" / DOCKER_ID).mkdir(parents=True)
    (docker / "containers" / DOCKER_ID / "config.v2.json").write_text(json.dumps({
        "ID": DOCKER_ID, "Name": "/web-1", "State": {"Running": True, "Pid": 300},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2",
                                                    "GlobalIPv6Address": "fd00::2"}}}}))
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    cni = netns_dir / "cni-1234"
    cni.write_text("")
    blue = netns_dir / "blue"
    blue.write_text("")
    cri = tmp_path / "cri"
    for cid, kind in ((POD_ID, "sandbox"), (CTR_ID, "container")):
        (cri / cid).mkdir(parents=True)
        (cri / cid / "config.json").write_text(json.dumps({
            "annotations": {"io.kubernetes.cri.container-type": kind,
                            "io.kubernetes.cri.sandbox-name": "api-7d4f",
                            "io.kubernetes.cri.sandbox-namespace": "shop"},
            "linux": {"namespaces": [{"type": "network", "path": str(cni)}]}}))
    proc = tmp_path / "proc"
    own = {2: ("kthreadd", "0::/", None), 300: ("nginx", f"0::/system.slice/docker-{DOCKER_ID}.scope", "d"),
           400: ("sleep", "0::/user.slice", "p")}
    for pid, (comm, cgroup, nsfile) in own.items():
        d = proc / str(pid) / "ns"
        d.mkdir(parents=True)
        target = tmp_path / f"ns-{nsfile or 'host'}"
        target.write_text("") if not target.exists() else None
        os.symlink(target, d / "net")
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "cgroup").write_text(cgroup + "\n")
    addrs = {str(cni): ["10.244.1.7"], str(blue): ["198.18.9.9"],
             str(proc / "400" / "ns" / "net"): ["192.0.2.40"]}
    names = A.collect(docker_root=str(docker), cri_root=str(cri), proc=str(proc),
                      run_netns=str(netns_dir), list_addresses=lambda p: addrs.get(p, []))
    return names, tmp_path


def test_docker_by_ip_and_by_netns(tmp_path):
    names, t = tree(tmp_path)
    assert names.by_ip["172.17.0.2"] == "web-1"
    assert names.by_ip["fd00::2"] == "web-1"
    assert names.by_netns[os.stat(t / "ns-d").st_ino] == "web-1"


def test_kubernetes_pod_by_ip(tmp_path):
    names, t = tree(tmp_path)
    assert names.by_ip["10.244.1.7"] == "shop/api-7d4f"
    assert names.by_netns[os.stat(t / "netns" / "cni-1234").st_ino] == "shop/api-7d4f"


def test_named_netns_process_and_host(tmp_path):
    names, t = tree(tmp_path)
    assert names.by_ip["198.18.9.9"] == "blue"
    assert names.by_ip["192.0.2.40"] == "pid 400 (sleep)"
    assert names.by_netns[os.stat(t / "ns-host").st_ino] == "host"


def test_missing_runtimes_are_not_errors(tmp_path):
    names = A.collect(docker_root=str(tmp_path / "no"), cri_root=str(tmp_path / "no"),
                      proc=str(tmp_path / "no"), run_netns=str(tmp_path / "no"),
                      list_addresses=lambda p: [])
    assert names.by_ip == {} and names.by_netns == {}


# --- the runtimes' real layouts, hostile state, expiry ---------------------------
import pytest
from tracer.core import dnat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def docker_cfg(name, pid, ips=(), mode="bridge", running=True):
    """config.v2.json, with hostconfig.json's content under "_host" (Host.docker splits them)."""
    return {"ID": "x", "Name": name, "State": {"Running": running, "Pid": pid},
            "_host": {"NetworkMode": mode},
            "NetworkSettings": {"Networks": {f"n{i}": {"IPAddress": ip} for i, ip in enumerate(ips)}}}


class Host:
    """A fake host: /proc (pids with a netns, comm, cgroup, cmdline), Docker
    data roots, containerd task dirs, Podman graph roots, /run/netns."""

    def __init__(self, t):
        self.t = t
        self.proc = t / "proc"
        self.netns_dir = t / "netns"
        self.netns_dir.mkdir()
        self.addrs: dict[str, list] = {}
        self.rules: dict[str, str] = {}      # netns path -> iptables-save output read there
        self.users: dict[str, int] = {}
        self.pid(1, "init", ns="host")
        self.pid(2, "kthreadd", ns="host")

    def ns(self, name):
        p = self.t / f"ns-{name}"
        if not p.exists():
            p.write_text("")
        return p

    def pid(self, pid, comm, ns, cgroup="0::/", cmdline=b""):
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        os.symlink(self.ns(ns), d / "ns" / "net")
        if pid == 1:
            os.symlink(self.ns("userns-host"), d / "ns" / "user")
        (d / "comm").write_bytes(comm if isinstance(comm, bytes) else comm.encode() + b"\n")
        (d / "cgroup").write_text(cgroup + "\n")
        (d / "cmdline").write_bytes(cmdline)
        return str(d / "ns" / "net")

    def docker(self, root, cid, cfg):
        d = self.t / root / "containers" / cid
        d.mkdir(parents=True)
        if isinstance(cfg, dict) and "_host" in cfg:
            (d / "hostconfig.json").write_text(json.dumps(cfg.pop("_host")))
        (d / "config.v2.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))

    def collect(self, **kw):
        args = dict(docker_root=[str(self.t / "docker")], cri_root=[str(self.t / "cri")],
                    podman_root=[str(self.t / "podman")], proc=str(self.proc),
                    run_netns=str(self.netns_dir), list_addresses=lambda p: self.addrs.get(p, []),
                    docker_conf=str(self.t / "daemon.json"), podman_conf=str(self.t / "storage.conf"),
                    userns=lambda p: self.users.get(p, os.stat(self.t / "ns-userns-host").st_ino),
                    list_dnat=lambda p: dnat.published(self.rules.get(p, "")))
        args.update(kw)
        return A.collect(**args)

    def ino(self, name):
        return os.stat(self.t / f"ns-{name}").st_ino


def test_host_network_container_is_the_host(tmp_path):
    h = Host(tmp_path)
    cid = "1" * 64
    h.pid(50, "nginx", ns="host", cgroup=f"0::/system.slice/docker-{cid}.scope")
    h.docker("docker", cid, docker_cfg("/hostnet", 50, mode="host"))
    n = h.collect()
    assert n.by_netns[h.ino("host")] == "host"
    assert "hostnet" not in n.by_netns.values() and "hostnet" not in n.by_ip.values()


def test_network_container_mode_keeps_the_owner_name(tmp_path):
    h = Host(tmp_path)
    own, join = "1" * 64, "2" * 64
    # the joiner has the lower pid: the namespace is still the owner's
    h.pid(40, "side", ns="a", cgroup=f"0::/docker-{join}.scope")
    h.pid(60, "web", ns="a", cgroup=f"0::/docker-{own}.scope")
    h.docker("docker", own, docker_cfg("/web", 60, ["172.18.0.2"]))
    h.docker("docker", join, docker_cfg("/side", 40, mode=f"container:{own}"))
    n = h.collect()
    assert n.by_netns[h.ino("a")] == "web" and n.by_ip["172.18.0.2"] == "web"


def test_stopped_container_claims_nothing(tmp_path):
    h = Host(tmp_path)
    h.docker("docker", "1" * 64, docker_cfg("/old", 0, ["172.17.0.2"], running=False))
    h.pid(70, "new", ns="b", cgroup="0::/docker-" + "2" * 64 + ".scope")
    h.docker("docker", "2" * 64, docker_cfg("/new", 70, ["172.17.0.2"]))
    assert h.collect().by_ip["172.17.0.2"] == "new"


def test_docker_data_root_from_daemon_json_and_dockerd_flags(tmp_path):
    h = Host(tmp_path)
    (tmp_path / "daemon.json").write_text(json.dumps({"data-root": str(tmp_path / "d1")}))
    (tmp_path / "priv.json").write_text(json.dumps({"data-root": str(tmp_path / "d2")}))
    h.pid(10, "dockerd", ns="host", cmdline=b"dockerd\0--config-file\0" + str(tmp_path / "priv.json").encode()
          + b"\0--exec-root\0/x\0")
    h.pid(11, "dockerd", ns="host", cmdline=b"dockerd\0--data-root=" + str(tmp_path / "d3").encode() + b"\0")
    for i, root in enumerate(("d1", "d2", "d3")):
        h.pid(100 + i, "app", ns=f"c{i}", cgroup=f"0::/docker-{str(i) * 64}.scope")
        h.docker(root, str(i) * 64, docker_cfg(f"/app{i}", 100 + i, [f"172.19.0.{i + 2}"]))
    n = h.collect(docker_root=None)
    assert [n.by_ip[f"172.19.0.{i + 2}"] for i in range(3)] == ["app0", "app1", "app2"]


def test_published_ports_name_the_destination_side(tmp_path):
    """Docker's published ports (NetworkSettings.Ports as bound, else
    HostConfig.PortBindings as asked) name who a dropped packet was going
    to, in the namespace of the dockerd that publishes them only."""
    h = Host(tmp_path)
    (tmp_path / "priv.json").write_text(json.dumps({"data-root": str(tmp_path / "d1")}))
    h.pid(10, "dockerd", ns="node", cmdline=b"dockerd\0--config-file\0" + str(tmp_path / "priv.json").encode())
    ids = ["1" * 64, "2" * 64, "3" * 64, "4" * 64]
    for i, cid in enumerate(ids):
        h.pid(100 + i, "app", ns=f"c{i}", cgroup=f"0::/docker-{cid}.scope")
    pub = docker_cfg("/pub", 100, ["172.19.0.2"])
    pub["NetworkSettings"]["Ports"] = {"80/udp": [{"HostIp": "0.0.0.0", "HostPort": "18080"},
                                                  {"HostIp": "::", "HostPort": "18080"}],
                                       "443/tcp": None}
    h.docker("d1", ids[0], pub)
    asked = docker_cfg("/asked", 101, ["172.19.0.3"])
    asked["_host"]["PortBindings"] = {"53/udp": [{"HostIp": "198.19.255.1", "HostPort": "5353"}]}
    h.docker("d1", ids[1], asked)
    any53 = docker_cfg("/any", 102, ["172.19.0.4"])
    any53["NetworkSettings"]["Ports"] = {"53/udp": [{"HostIp": "", "HostPort": "5353"}],
                                         "x/udp": [{"HostPort": "1"}], "9/udp": [{"HostPort": "99999"}],
                                         "8/udp": [{"HostPort": "7", "HostIp": "not an ip"}],
                                         "7/udp": "junk", "6/udp": [{"HostPort": ["6"]}]}
    h.docker("d1", ids[2], any53)
    n = h.collect(docker_root=None)
    node = h.ino("node")
    assert set(n.published) == {(node, "udp", 18080), (node, "udp", 5353)}
    at = A.Attribution()
    at.names = n
    assert at.published(node, "udp", "198.19.255.1", 18080) == "pub"
    assert at.published(node, "udp", "fd00::1", 18080) == "pub"
    assert at.published(node, "tcp", "198.19.255.1", 18080) is None
    assert at.published(h.ino("host"), "udp", "198.19.255.1", 18080) is None   # not that dockerd's namespace
    assert at.published(node, "udp", "198.19.255.1", 5353) == "asked"          # one address beats any
    assert at.published(node, "udp", "198.19.255.9", 5353) == "any"
    assert at.published(node, "udp", "198.19.255.1", None) is None
    assert at.published(node, "udp", "172.19.0.3", 18080) is None     # a container's address: not the node's
    # no published port: where NAT changed the destination, that address's owner
    assert at.destination(node, "udp", "10.0.0.1", 53, ("10.0.0.2", 1, "172.19.0.4", 53)) == "any"
    assert at.destination(node, "udp", "172.19.0.4", 53, ("10.0.0.2", 1, "172.19.0.4", 53)) is None
    assert at.destination(node, "udp", "198.19.255.1", 18080, None) == "pub"


NETAVARK = """*nat
-A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 8081 -m comment --comment "dnat name: ctt id: {cid}" -j NETAVARK-DN-1
-A NETAVARK-DN-1 -s 198.19.251.0/24 -p tcp -m tcp --dport 8081 -j NETAVARK-HOSTPORT-SETMARK
-A NETAVARK-DN-1 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 198.19.251.5:80
COMMIT
"""
KUBE_PROXY = """*nat
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-X
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "shop/api" -m tcp --dport 30080 -j KUBE-EXT-Y
-A KUBE-NODEPORTS -p tcp -m comment --comment "shop/two" -m tcp --dport 30081 -j KUBE-SVC-Z
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30082 -j DNAT --to-destination 10.9.9.9:1
-A KUBE-EXT-Y -j KUBE-MARK-MASQ
-A KUBE-EXT-Y -j KUBE-SVC-Y
-A KUBE-SVC-Y -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.0.5:8080
-A KUBE-SVC-X -j KUBE-SEP-A2
-A KUBE-SEP-A2 -p udp -m udp -j DNAT --to-destination 10.244.0.5:53
-A KUBE-SVC-Z -m statistic --mode random --probability 0.5 -j KUBE-SEP-A
-A KUBE-SVC-Z -j KUBE-SEP-B
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.0.6:8080
COMMIT
"""


def test_dnat_rules_name_podman_and_kubernetes_destinations(tmp_path):
    """Ports that only DNAT rules tell (netavark, kube-proxy): read in the
    host's namespace and in root conmon/kube-proxy namespaces, named when
    every backend is one name's, never from a user's own namespace."""
    h = Host(tmp_path)
    cid, nsp, bundle = podman_state(h, tmp_path)
    conmon = h.pid(13, "conmon", ns="node", cmdline=b"conmon\0-b\0" + str(bundle).encode())
    h.rules[conmon] = NETAVARK.format(cid=cid)
    cni = h.netns_dir / "cni-1"
    cni.write_text("")
    h.addrs[str(cni)] = ["10.244.0.5"]
    write_cri(h, "cri", "s1", cri_spec("sandbox", "api-1", "shop", "s1", netns=str(cni)))
    h.rules[str(h.proc / "1" / "ns" / "net")] = KUBE_PROXY
    n = h.collect(podman_root=None, cri_root=[str(tmp_path / "cri")])
    node, host = h.ino("node"), h.ino("host")
    at = A.Attribution()
    at.names = n
    assert at.published(node, "tcp", "198.19.255.1", 8081) == "pweb"
    assert at.published(host, "tcp", "198.19.255.1", 8081) is None        # another namespace's rules
    assert at.published(host, "tcp", "203.0.113.1", 30080) == "shop/api-1"  # a NodePort, any address
    assert at.published(host, "udp", "10.96.0.10", 53) == "shop/api-1"      # a ClusterIP
    assert at.published(host, "udp", "10.96.0.11", 53) is None
    assert at.published(host, "tcp", "203.0.113.1", 30081) is None    # two pods behind it
    assert at.published(host, "tcp", "203.0.113.1", 30082) is None    # a backend nobody is known for
    assert at.destination(host, "tcp", "203.0.113.1", 30080, None) == "shop/api-1"
    # the same rules in a namespace of a conmon run by a user: not read
    os.chown(h.proc / "13", 1000, 1000) if os.geteuid() == 0 else None
    if os.geteuid() == 0:
        assert (node, "tcp", 8081) not in h.collect(podman_root=None).published
    # read once per RULES_TTL_S
    calls = []
    cache: dict = {}
    for t in (0.0, 1.0, A.RULES_TTL_S + 1):
        h.collect(list_dnat=lambda p: calls.append(p) or [], rules_cache=cache, now=t)
    assert len(calls) == 2 * len(set(calls))


def cri_spec(kind, pod, ns, sandbox, container=None, netns=None, own=True):
    ann = {"io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.sandbox-name": pod,
           "io.kubernetes.cri.sandbox-namespace": ns, "io.kubernetes.cri.sandbox-id": sandbox}
    if container:
        ann["io.kubernetes.cri.container-name"] = container
    nss = [{"type": "pid"}] + ([{"type": "network", **({"path": netns} if netns else {})}] if own else [])
    return {"annotations": ann, "linux": {"namespaces": nss}}


def write_cri(h, root, cid, spec):
    d = h.t / root / cid
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(spec))


def test_cri_pods_app_containers_and_host_network_pod(tmp_path):
    h = Host(tmp_path)
    cni = h.netns_dir / "cni-1"
    cni.write_text("")
    h.addrs[str(cni)] = ["10.244.0.5"]
    write_cri(h, "cri", "s1", cri_spec("sandbox", "api-1", "shop", "s1", netns=str(cni)))
    pause = h.pid(90, "pause", ns="pod")
    write_cri(h, "cri", "c1", cri_spec("container", "api-1", "shop", "s1", "api", netns=pause))
    write_cri(h, "cri", "s2", cri_spec("sandbox", "agent-x", "kube-system", "s2", own=False))
    write_cri(h, "cri", "c2", cri_spec("container", "agent-x", "kube-system", "s2", "agent", own=False))
    # containerd's state dir is found from its command line
    h.pid(12, "containerd", ns="host", cmdline=b"containerd\0--state\0" + str(tmp_path / "st").encode() + b"\0")
    write_cri(h, f"st/{A.CRI_NS}", "s3", cri_spec("sandbox", "db-0", "shop", "s3", netns=str(cni)))
    n = h.collect(cri_root=[str(tmp_path / "cri")])
    assert n.by_ip["10.244.0.5"] == "shop/api-1"
    assert n.by_netns[os.stat(cni).st_ino] == "shop/api-1"
    assert n.meta["shop/api-1"] == {"runtime": "containerd", "namespace": "shop", "pod": "api-1",
                                    "container": "api"}
    assert n.meta["kube-system/agent-x"]["pod"] == "agent-x"
    assert n.by_netns[h.ino("host")] == "host"
    assert "shop/db-0" in h.collect(cri_root=None).meta


def podman_state(h, tmp_path):
    """A rootful Podman container "pweb" (198.19.251.5) in a graph root:
    (its id, its namespace's path, its bundle)."""
    cid = "ab" * 32
    nsp = h.netns_dir / "netns-1234"
    nsp.write_text("")
    h.addrs[str(nsp)] = ["198.19.251.5"]
    base = tmp_path / "pm" / "overlay-containers"
    (base / cid / "userdata").mkdir(parents=True)
    (base / "containers.json").write_text(json.dumps([{"id": cid, "names": ["pweb"]}]))
    (base / cid / "userdata" / "config.json").write_text(json.dumps({
        "annotations": {"io.container.manager": "libpod"},
        "linux": {"namespaces": [{"type": "network", "path": str(nsp)}]}}))
    return cid, nsp, base / cid / "userdata"


def test_podman_rootful(tmp_path):
    h = Host(tmp_path)
    cid, nsp, bundle = podman_state(h, tmp_path)
    # found from conmon's bundle
    h.pid(13, "conmon", ns="host", cmdline=b"conmon\0-b\0" + str(bundle).encode() + b"\0")
    n = h.collect(podman_root=None)
    assert n.by_ip["198.19.251.5"] == "pweb" and n.by_netns[os.stat(nsp).st_ino] == "pweb"
    assert n.meta["pweb"]["runtime"] == "podman"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (state files owned by another user: chown)")
def test_podman_rootless_state_is_another_users(tmp_path):
    """Rootless Podman's state (a user's home, found from that user's
    conmon; the vfs driver's layout here): the namespace is the one of
    conmon's child (config.json's path is a bind mount in the user's own
    mount namespace only), named only inside a user namespace, its
    addresses ranked lowest. A hostile user's containers.json pointing at
    a root-owned namespace names nothing, takes no address from a named
    one; another user's conmon cannot name this user's containers."""
    h = Host(tmp_path)
    root = tmp_path / "home" / ".local" / "share" / "containers" / "storage"
    base = root / "vfs-containers"
    own, hostile, other = "ab" * 32, "cd" * 32, "ef" * 32
    victim = h.netns_dir / "netns-rootful"   # the host's user namespace
    victim.write_text("")
    h.addrs[str(victim)] = ["198.19.251.5"]
    for cid, name, path in ((own, "rl-web", "/run/user/4321/netns/netns-1"), (hostile, "evil", victim),
                            (other, "rl-other", "/run/user/4321/netns/netns-2")):
        (base / cid / "userdata").mkdir(parents=True)
        (base / cid / "userdata" / "config.json").write_text(json.dumps({
            "annotations": {"io.container.manager": "libpod"},
            "linux": {"namespaces": [{"type": "network", "path": str(path)}]}}))
    (base / "containers.json").write_text(json.dumps([{"id": own, "names": ["rl-web"]},
                                                      {"id": hostile, "names": ["evil"]},
                                                      {"id": other, "names": ["rl-other"]}]))
    for p in [root, *root.rglob("*")]:
        os.chown(p, 4321, 4321)
    kid = h.pid(14, "sleep", ns="rl")
    h.users[kid] = 777
    h.addrs[kid] = ["10.0.2.100", "198.19.251.5"]
    for pid, cid, child, uid in ((13, own, 14, 4321), (15, other, 16, 0)):
        h.pid(pid, "conmon", ns="host", cmdline=b"conmon\0-c\0" + cid.encode() + b"\0-b\0"
              + str(base / cid / "userdata").encode() + b"\0")
        (h.proc / str(pid) / "task" / str(pid)).mkdir(parents=True)
        (h.proc / str(pid) / "task" / str(pid) / "children").write_text(f"{child} ")
        os.chown(h.proc / str(pid), uid, uid)
    h.pid(16, "sleep", ns="other")
    h.users[str(h.proc / "16" / "ns" / "net")] = 778
    n = h.collect(podman_root=None)
    assert n.by_netns[h.ino("rl")] == "rl-web" and n.meta["rl-web"]["runtime"] == "podman-rootless"
    assert n.by_ip["10.0.2.100"] == "rl-web"
    assert n.by_ip["198.19.251.5"] == "netns-rootful"          # the named namespace's, not the user's
    assert "evil" not in n.by_netns.values() and "evil" not in n.meta
    assert "rl-other" not in n.by_netns.values()                # root's conmon does not name the user's


def test_foreign_user_namespace_cannot_steal_a_pod_address(tmp_path):
    h = Host(tmp_path)
    cni = h.netns_dir / "cni-1"
    cni.write_text("")
    write_cri(h, "cri", "s1", cri_spec("sandbox", "api-1", "shop", "s1", netns=str(cni)))
    evil = h.pid(5, "sh", ns="evil")               # a lower pid, listed first
    h.users[evil] = 4242                           # owned by another user namespace
    h.addrs[evil] = ["10.244.0.5", "10.244.0.99"]
    h.addrs[str(cni)] = ["10.244.0.5"]
    n = h.collect()
    assert n.by_ip["10.244.0.5"] == "shop/api-1"
    assert n.by_ip["10.244.0.99"] == "pid 5 (sh)"  # unclaimed by anyone else: still named


def test_hostile_process_name(tmp_path):
    h = Host(tmp_path)
    p = h.pid(9, b"\xff\xfe\x1b[31mx\n", ns="u")
    h.addrs[p] = ["192.0.2.9"]
    name = h.collect().by_ip["192.0.2.9"]
    assert name.startswith("pid 9 (") and "\x1b" not in name
    name.encode("utf-8")                            # no lone surrogate


HOSTILE = ["[" * 100_000 + "]" * 100_000, "[]", "null", "1", '"x"', "{", "\xff",
           json.dumps({"Name": 5, "State": [], "NetworkSettings": {"Networks": []}}),
           json.dumps({"Name": "/\ud800", "State": {"Running": True, "Pid": "7"},
                       "NetworkSettings": {"Networks": {"a": {"IPAddress": ["x"]}, "b": []}}}),
           json.dumps({"State": {"Running": True, "Pid": True}, "HostConfig": {"NetworkMode": 3}}),
           json.dumps({"State": {"Running": True, "Pid": 10 ** 30}})]


@pytest.mark.parametrize("text", HOSTILE)
def test_one_hostile_file_blanks_nothing_else(tmp_path, text):
    h = Host(tmp_path)
    h.pid(80, "web", ns="w", cgroup="0::/docker-" + "1" * 64 + ".scope")
    h.docker("docker", "1" * 64, docker_cfg("/web", 80, ["172.17.0.9"]))
    h.docker("docker", "2" * 64, text)
    write_cri(h, "cri", "s9", {"x": 1})
    (h.t / "cri" / "s8").mkdir()
    (h.t / "cri" / "s8" / "config.json").write_text(text)
    (h.t / "podman" / "overlay-containers").mkdir(parents=True)
    (h.t / "podman" / "overlay-containers" / "containers.json").write_text(text)
    (h.t / "daemon.json").write_text(text)
    h.collect(docker_root=None)                     # a hostile daemon.json: still a result
    n2 = h.collect()
    assert n2.by_ip["172.17.0.9"] == "web"
    for v in list(n2.by_ip.values()) + list(n2.by_netns.values()):
        v.encode("utf-8")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["Name", "State", "Running", "Pid", "NetworkSettings", "Networks",
                         "IPAddress", "GlobalIPv6Address", "HostConfig", "NetworkMode", "annotations",
                         "linux", "namespaces", "type", "path", "id", "names",
                         "io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-name",
                         "io.kubernetes.cri.sandbox-namespace", "io.container.manager", "x",
                         "Ports", "PortBindings", "HostPort", "HostIp", "80/udp"]),
        kids, max_size=5),
    max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docker_v=json_values, cri_v=json_values, podman_v=json_values, spec_v=json_values,
       raw=st.binary(max_size=64))
def test_fuzz_state_files_end_in_names(tmp_path_factory, docker_v, cri_v, podman_v, spec_v, raw):
    """Any content of the runtimes' JSON files: collect() returns, and the
    one well-formed container keeps its name."""
    h = Host(tmp_path_factory.mktemp("fz"))
    h.pid(80, "web", ns="w", cgroup="0::/docker-" + "1" * 64 + ".scope")
    h.docker("docker", "1" * 64, docker_cfg("/web", 80, ["172.17.0.9"]))
    h.docker("docker", "2" * 64, json.dumps(docker_v))
    h.docker("docker", "3" * 64, raw.decode("latin-1"))
    write_cri(h, "cri", "s1", cri_v)
    base = h.t / "podman" / "overlay-containers"
    (base / ("ab" * 32) / "userdata").mkdir(parents=True)
    (base / "containers.json").write_text(json.dumps(podman_v if not isinstance(podman_v, list)
                                                     else podman_v + [{"id": "ab" * 32, "names": ["p"]}]))
    (base / ("ab" * 32) / "userdata" / "config.json").write_text(json.dumps(spec_v))
    (h.t / "daemon.json").write_text(json.dumps(docker_v))
    n = h.collect()
    assert n.by_ip["172.17.0.9"] == "web"
    for (_, proto, port), binds in n.published.items():
        assert proto in ("tcp", "udp", "sctp") and 0 < port < 65536 and all(len(b) == 2 for b in binds)
    for v in list(n.by_ip.values()) + list(n.by_netns.values()) + list(n.meta):
        assert isinstance(v, str) and len(v) <= A.MAX_NAME
        v.encode("utf-8")


def test_exited_names_are_kept_for_a_while_then_forgotten(tmp_path, monkeypatch):
    h = Host(tmp_path)
    h.pid(80, "web", ns="w", cgroup="0::/docker-" + "1" * 64 + ".scope")
    h.docker("docker", "1" * 64, docker_cfg("/web", 80, ["172.17.0.9"]))
    clock = [1000.0]
    monkeypatch.setattr(A.time, "monotonic", lambda: clock[0])
    at = A.Attribution(keep=60, **{k: v for k, v in dict(
        docker_root=[str(tmp_path / "docker")], cri_root=[], podman_root=[], proc=str(h.proc),
        run_netns=str(h.netns_dir), list_addresses=lambda p: []).items()})
    at.refresh()
    assert at.ip("172.17.0.9") == "web"
    (tmp_path / "docker" / "containers" / ("1" * 64) / "config.v2.json").unlink()
    clock[0] += 30
    at.refresh()
    assert at.ip("172.17.0.9") == "web"            # exited 30 s ago: still named
    clock[0] += 31
    at.refresh()
    assert at.ip("172.17.0.9") is None             # past the expiry window
    at.refresh()
    assert at.kept()["ip"] == 0


def test_a_failing_refresh_keeps_the_names(tmp_path, monkeypatch):
    at = A.Attribution(proc=str(tmp_path))
    at.names = A.Names(by_ip={"10.0.0.1": "web"})
    monkeypatch.setattr(A, "collect", lambda **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    at.refresh()
    assert at.ip("10.0.0.1") == "web" and at.failures == 1


def test_kept_names_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "KEEP_MAX", 100)
    at = A.Attribution()
    for i in range(5):
        monkeypatch.setattr(A, "collect", lambda **kw: A.Names(
            by_ip={f"10.0.{i}.{j}": f"c{i}-{j}" for j in range(60)}))
        at.refresh()
    assert at.kept()["ip"] == 100 and len(at.names.by_ip) == 100
    assert at.ip("10.0.4.59") == "c4-59"
