#!/usr/bin/env python3
"""Write deploy/seccomp.json: Docker's default seccomp profile, resolved for
the DaemonSet's capabilities, plus what BCC needs.

Docker's default profile (profiles/seccomp/default.json, Docker 20.10, as
Debian ships it in golang-github-docker-docker-dev) allows bpf(2),
perf_event_open(2) and setns(2) only to containers holding CAP_SYS_ADMIN,
and writes its conditions in Docker's own fields (`includes`/`excludes`
by capability and architecture), which the OCI runtime spec that
containerd reads for a Kubernetes `Localhost` profile does not have. So
this script resolves the conditions once, for the capabilities listed in
deploy/daemonset.yaml and for x86-64 and arm64 nodes, and writes a plain
allow-list (`defaultAction`, `architectures`, `syscalls` with `names`,
`action`, `args`) that Docker, containerd and CRI-O all read the same way.
Added to it, because cttrace needs them without CAP_SYS_ADMIN:
  bpf              load the probe, create and read its maps (CAP_BPF);
  perf_event_open  attach it to the tracepoint, open the perf buffer
                   (CAP_PERFMON);
  setns            enter another network namespace (`serve --netns`, and the
                   container names: addresses are listed inside each pod's
                   namespace); the kernel still asks for CAP_SYS_ADMIN, which
                   the DaemonSet adds only when asked to.
Taken away from Docker's default, because cttrace does not use them and
they widen what a compromised exporter could do:
  ptrace           reading or changing other processes (cttrace reads
                   process names and namespaces from /proc files only);
  io_uring_setup, io_uring_enter, io_uring_register
                   asynchronous I/O that seccomp cannot see into (cttrace
                   uses plain reads, netlink sockets and bpf(2)).
Newer Docker releases allow the first two to CAP_BPF / CAP_PERFMON holders
as well. scripts/imagetest runs the image under this profile and shows that
removing any of these three makes `serve` fail.

  python3 deploy/seccomp.py [DOCKER_DEFAULT_JSON]           # rewrite seccomp.json
  python3 deploy/seccomp.py --check [DOCKER_DEFAULT_JSON]   # exit 1 if it differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCKER_DEFAULT = "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"
ARCHES = {"amd64", "x86", "x32", "arm64", "arm"}           # x86-64 and arm64 nodes
ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
BCC_NEEDS = ["bpf", "perf_event_open", "setns"]
NOT_NEEDED = {"ptrace", "io_uring_setup", "io_uring_enter", "io_uring_register"}


def daemonset_caps(path: Path = HERE / "daemonset.yaml") -> set[str]:
    import yaml
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            c = doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            return {f"CAP_{n}" for n in c.get("add", [])}
    raise SystemExit(f"{path}: no DaemonSet")


def _applies(rule: dict, caps: set[str]) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and not set(inc["arches"]) & ARCHES:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if exc.get("arches") and set(exc["arches"]) >= ARCHES:
        return False
    return True


def build(docker_default: dict, caps: set[str]) -> dict:
    syscalls = []
    allowed: set[str] = set()
    for rule in docker_default["syscalls"]:
        if not _applies(rule, caps):
            continue
        names = sorted(n for n in rule["names"] if n not in NOT_NEEDED)
        if not names:
            continue
        out = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            out["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                           for a in rule["args"]]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        if out["action"] == "SCMP_ACT_ALLOW" and "args" not in out:
            allowed.update(out["names"])
        syscalls.append(out)
    extra = [n for n in BCC_NEEDS if n not in allowed]
    if extra:
        syscalls.append({"names": extra, "action": "SCMP_ACT_ALLOW"})
    profile = {"defaultAction": docker_default["defaultAction"], "architectures": ARCHITECTURES,
               "syscalls": syscalls}
    if "defaultErrnoRet" in docker_default:
        profile["defaultErrnoRet"] = docker_default["defaultErrnoRet"]
    return profile


def render(profile: dict) -> str:
    return json.dumps(profile, indent=1) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    src = Path(args[0] if args else DOCKER_DEFAULT)
    try:
        default = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        print(f"seccomp.py: cannot read Docker's default profile {src}: {e} "
              "(Debian: apt-get install golang-github-docker-docker-dev)", file=sys.stderr)
        return 2
    text = render(build(default, daemonset_caps()))
    target = HERE / "seccomp.json"
    if check:
        if target.read_text() != text:
            print(f"seccomp.py: {target} is not what {src} and the DaemonSet's capabilities give: "
                  "rerun deploy/seccomp.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
