#!/usr/bin/env python3
"""Benchmark container attribution (not a test): refresh time and memory
with many containers.

  .venv/bin/python scripts/bench_attribution.py [--containers 500] [--rounds 20]

The host state is fake but shaped exactly as the runtimes write it (seen
with Debian 12's dockerd 20.10, containerd 1.6 and Podman 4.3 in
tests/runtime): per Docker container a config.v2.json (Name, State,
NetworkSettings.Networks with its address, ~3 KB as dockerd writes it) and
a hostconfig.json; per pod a containerd task config.json (an OCI spec with
the CRI annotations, ~6 KB) for its sandbox and its app container; a /proc
with one process per container (ns/net, comm, cgroup). Three hosts:
N Docker containers; N/2 pods (N containers: sandbox + app); both.

Pods' addresses are listed inside their namespaces (`nsenter ip -j addr`,
one process per namespace, cached 60 s per namespace): the fake lister
costs nothing, so the cost of one real listing is measured apart (as root,
in a namespace made here) and the first refresh's extra is that times N/2.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tracer.kernel import attribution as A  # noqa: E402

PAD = "x" * 2500          # dockerd's config.v2.json carries ~3 KB (Config, mounts, labels)


def make_host(t: Path, docker: int, pods: int) -> dict:
    proc, netns = t / "proc", t / "netns"
    netns.mkdir(parents=True)
    (t / "nsfiles").mkdir()
    addrs = {}
    pid = 100

    def process(comm, cgroup):
        nonlocal pid
        pid += 1
        d = proc / str(pid) / "ns"
        d.mkdir(parents=True)
        f = t / "nsfiles" / str(pid)
        f.write_text("")
        os.symlink(f, d / "net")
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "cgroup").write_text(cgroup + "\n")
        return pid

    for p in (1, 2):
        (proc / str(p) / "ns").mkdir(parents=True)
        os.symlink("/proc/self/ns/net", proc / str(p) / "ns" / "net")
        (proc / str(p) / "comm").write_text("init\n")
        (proc / str(p) / "cgroup").write_text("0::/\n")
    for i in range(docker):
        cid = f"{i:064x}"
        p = process("nginx", f"0::/system.slice/docker-{cid}.scope")
        d = t / "docker" / "containers" / cid
        d.mkdir(parents=True)
        (d / "config.v2.json").write_text(json.dumps({
            "ID": cid, "Name": f"/web-{i}", "Created": "2026-12-06T02:29:00Z", "Path": "sleep",
            "Args": ["3600"], "State": {"Running": True, "Paused": False, "Pid": p, "ExitCode": 0,
                                        "StartedAt": "2026-12-06T02:29:00Z"},
            "Config": {"Hostname": cid[:12], "Env": ["PATH=/bin"], "Cmd": ["sleep", "3600"],
                       "Image": "ctt/bb:1", "Labels": {"pad": PAD}},
            "NetworkSettings": {"Bridge": "", "SandboxID": cid, "Networks": {"bridge": {
                "IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "n" * 64,
                "EndpointID": "e" * 64, "Gateway": "172.17.0.1",
                "IPAddress": f"172.17.{i // 250}.{i % 250 + 2}", "IPPrefixLen": 16,
                "MacAddress": "02:42:ac:11:00:02", "GlobalIPv6Address": ""}}},
            "LogPath": f"/var/lib/docker/containers/{cid}/{cid}-json.log"}))
        (d / "hostconfig.json").write_text(json.dumps({"NetworkMode": "bridge", "PortBindings": {},
                                                       "RestartPolicy": {"Name": "no"}}))
    for i in range(pods):
        sid, cid = f"{i:060x}sbox", f"{i:060x}appc"
        path = netns / f"cni-{i:08x}"
        path.write_text("")
        addrs[str(path)] = [f"10.244.{i // 250}.{i % 250 + 2}"]
        for kind, x, name in (("sandbox", sid, None), ("container", cid, "app")):
            process("pause" if kind == "sandbox" else "app", f"0::/kubepods/pod/{x}")
            d = t / "cri" / x
            d.mkdir(parents=True)
            ann = {"io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.sandbox-id": sid,
                   "io.kubernetes.cri.sandbox-name": f"api-{i}",
                   "io.kubernetes.cri.sandbox-namespace": "shop",
                   "io.kubernetes.cri.sandbox-log-directory": f"/var/log/pods/shop_api-{i}_{sid}"}
            if name:
                ann["io.kubernetes.cri.container-name"] = name
            (d / "config.json").write_text(json.dumps({
                "ociVersion": "1.0.2-dev", "process": {"args": ["/pause"], "env": ["PATH=/bin"] * 20,
                                                       "cwd": "/", "capabilities": {"bounding": ["CAP_CHOWN"] * 14}},
                "root": {"path": "rootfs", "readonly": True}, "hostname": f"api-{i}",
                "mounts": [{"destination": f"/m{j}", "type": "bind", "source": "/x"} for j in range(20)],
                "annotations": ann,
                "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                                         {"type": "network", "path": str(path)}],
                          "maskedPaths": ["/proc/kcore"] * 15}}))
    return addrs


def measure(t: Path, rounds: int, addrs: dict) -> dict:
    args = dict(docker_root=[str(t / "docker")], cri_root=[str(t / "cri")], podman_root=[],
                proc=str(t / "proc"), run_netns=str(t / "netns"),
                list_addresses=lambda p: addrs.get(p, []), docker_conf="/nonexistent",
                podman_conf="/nonexistent")
    at = A.Attribution(**args)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        at.refresh()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()            # (slows a refresh down: timed above without it)
    at.refresh()
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times.sort()
    n = at.names
    return {"ips": len(n.by_ip), "netns": len(n.by_netns), "median_ms": round(1000 * times[len(times) // 2], 1),
            "max_ms": round(1000 * times[-1], 1), "kept_kib": round(cur / 1024), "peak_kib": round(peak / 1024)}


def one_listing_ms() -> float | None:
    """A real `nsenter ip -j addr` in a namespace made here (root only)."""
    if os.geteuid() != 0:
        return None
    name = "ctbench-attr"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        t0 = time.perf_counter()
        for _ in range(20):
            A.addresses(f"/run/netns/{name}")
        return round(1000 * (time.perf_counter() - t0) / 20, 1)
    finally:
        subprocess.run(["ip", "netns", "del", name])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    n = a.containers
    for label, docker, pods in (("docker", n, 0), ("pods", 0, n // 2), ("both", n, n // 2)):
        with tempfile.TemporaryDirectory() as d:
            addrs = make_host(Path(d), docker, pods)
            r = measure(Path(d), a.rounds, addrs)
            print(f"{label:6} {docker:4} docker + {pods:4} pods ({docker + 2 * pods} containers): "
                  f"refresh median {r['median_ms']} ms, max {r['max_ms']} ms; names {r['ips']} addresses, "
                  f"{r['netns']} namespaces; memory kept {r['kept_kib']} KiB (peak {r['peak_kib']} KiB)")
    ms = one_listing_ms()
    if ms is not None:
        print(f"one real address listing (nsenter ip -j addr): {ms} ms; a first refresh with {n // 2} pods "
              f"adds about {round(ms * (n // 2) / 1000, 1)} s, then each namespace is listed again every "
              f"{A.ADDR_TTL_S:.0f} s (about {round(ms * (n // 2) / A.ADDR_TTL_S / 10, 1)} % of a CPU)")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


if __name__ == "__main__":
    main()
