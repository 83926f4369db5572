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
    (docker / DOCKER_ID).mkdir(parents=True)
    (docker / DOCKER_ID / "config.v2.json").write_text(json.dumps({
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
