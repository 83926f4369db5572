"""The cttrace image, run as deploy/daemonset.yaml runs it (its capabilities,
seccomp profile, read-only root, host network and PID namespaces, host
mounts, arguments), through containerd and runc as on a Kubernetes node,
and scraped from the host: its metrics must match the kernel. Then each
capability and each syscall the DaemonSet grants is taken away in turn:
`serve` must fail without it, with a one-line error."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REF = os.environ.get("CTTRACE_IMAGE_REF", "")
CTR = shlex.split(os.environ.get("CTTRACE_IMAGE_CTR", "ctr"))
LOGS = Path(os.environ.get("CTTRACE_IMAGE_LOGS", "/tmp"))


def daemonset_container() -> dict:
    for doc in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            spec = doc["spec"]["template"]["spec"]
            c = next(c for c in spec["containers"] if c["name"] == "cttrace")
            return {"spec": spec, "container": c}
    raise AssertionError("no DaemonSet in deploy/daemonset.yaml")


DS = daemonset_container()
CAPS = DS["container"]["securityContext"]["capabilities"]["add"]


# linux/capability.h, 0..40
ALL_CAPS = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
            "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
            "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
            "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
            "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
            "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Serve:
    """`cttrace serve` in the image, run as the DaemonSet says, with
    `caps` / `seccomp` / extra arguments changed where a test says so."""

    def __init__(self, caps: list[str] | None = None, seccomp: Path | None = None, extra: tuple = ()):
        c, spec = DS["container"], DS["spec"]
        sc = c["securityContext"]
        assert spec["hostNetwork"] and spec["hostPID"] and sc["readOnlyRootFilesystem"]
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
        self.port = free_port()
        self.name = f"cttrace-{uuid.uuid4().hex[:8]}"
        self.log = LOGS / f"{self.name}.log"
        if seccomp is None:
            prof = sc["seccompProfile"]
            assert prof["type"] == "Localhost"
            seccomp = DEPLOY / "seccomp.json"          # what the node holds as localhostProfile
        args = list(c["args"])
        i = args.index("--listen")
        assert args[i + 1].startswith("127.0.0.1:"), "the DaemonSet must listen on loopback only"
        args[i + 1] = f"127.0.0.1:{self.port}"
        assert args[0] == "serve"
        cmd = [*CTR, "run", "-d", "--net-host", "--with-ns", f"pid:/proc/{os.getpid()}/ns/pid",
               "--read-only", "--seccomp", "--seccomp-profile", str(seccomp),
               "--log-uri", f"file://{self.log}", "--fifo-dir", str(LOGS / "fifo"),
               "--runc-root", str(LOGS / "runc")]
        # ctr starts from Docker's default set: add the DaemonSet's, drop every other
        keep = set(CAPS if caps is None else caps)
        cmd += [a for cap in sorted(keep) for a in ("--cap-add", f"CAP_{cap}")]
        cmd += [a for cap in ALL_CAPS if cap not in keep for a in ("--cap-drop", f"CAP_{cap}")]
        vols = {v["name"]: v for v in spec["volumes"]}
        for m in c["volumeMounts"]:
            v = vols[m["name"]]
            if "emptyDir" in v:
                cmd += ["--mount", f"type=tmpfs,src=tmpfs,dst={m['mountPath']},options=nosuid:nodev"]
                continue
            src = v["hostPath"]["path"]
            if not os.path.exists(src):                  # DirectoryOrCreate: leave the host alone
                continue
            opts = ["rbind", "ro" if m.get("readOnly") else "rw"]
            if m.get("mountPropagation") == "HostToContainer":
                opts.append("rslave")
            cmd += ["--mount", f"type=bind,src={src},dst={m['mountPath']},options={':'.join(opts)}"]
        cmd += [REF, self.name, "/usr/bin/cttrace", *args, *extra]
        self.cmd = cmd
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        self.exit_code: int | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def _status(self) -> tuple[int, str]:
        out = subprocess.run([*CTR, "tasks", "ls"], capture_output=True, text=True).stdout
        for line in out.splitlines()[1:]:
            t = line.split()
            if t and t[0] == self.name:
                return int(t[1]), t[2]
        return 0, "GONE"

    def wait_ready(self, timeout: float = 120) -> bool:
        """True once /metrics answers (serve listens only after its probe is
        attached); False if the task stopped first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url(), timeout=2):
                    return True
            except OSError:
                pass
            if self._status()[1] == "STOPPED":
                return False
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: neither serving nor stopped after {timeout} s: {self.output()}")

    def pid(self) -> int:
        return self._status()[0]

    def scrape(self) -> dict:
        with urllib.request.urlopen(self.url(), timeout=10) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def output(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def stop(self, sig: str = "TERM") -> int:
        if self._status()[1] == "RUNNING":
            subprocess.run([*CTR, "tasks", "kill", "-s", sig, self.name], capture_output=True)
            deadline = time.monotonic() + 30
            while self._status()[1] == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.2)
        r = subprocess.run([*CTR, "tasks", "rm", "-f", self.name], capture_output=True, text=True)
        m = re.search(r"exit code (\d+)", r.stdout + r.stderr)
        self.exit_code = int(m.group(1)) if m else 0
        subprocess.run([*CTR, "containers", "rm", self.name], capture_output=True)
        return self.exit_code

    def refused(self) -> str:
        """The one-line error of a serve that could not start."""
        assert not self.wait_ready(), f"serve started: {self.output()}"
        code = self.stop()
        lines = [l for l in self.output().splitlines() if l.strip()]
        assert code != 0 and lines, (code, lines)
        assert lines[-1].startswith("cttrace: error: ") and "Traceback" not in self.output(), lines
        return lines[-1]


def value(m: dict, name: str, **labels) -> float | None:
    """The sample of `name` whose labels include `labels` (others, such as
    the namespace and pod labels, may be there too), None if there is none."""
    want = labels.items()
    hits = [v for (n, ls), v in m.items() if n == name and want <= dict(ls).items()]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def _host_stats() -> dict[str, int]:
    with open("/proc/net/stat/nf_conntrack") as f:
        lines = f.read().split("\n")
    names, total = lines[0].split(), {}
    for line in lines[1:]:
        for n, v in zip(names, line.split()):
            total[n] = total.get(n, 0) + int(v, 16)
    return total


def _host_count() -> int:
    return int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())


def test_the_daemonset_serves_this_hosts_table():
    """Exactly the DaemonSet: its capabilities, profile, mounts and
    arguments, on the node's (this host's) own table."""
    mounts = {m["mountPath"] for m in DS["container"]["volumeMounts"]}
    assert not mounts & {"/lib/modules", "/usr/src"}, "the image carries its own kernel headers"
    t0 = time.monotonic()
    s = Serve()
    try:
        assert s.wait_ready(), s.output()
        started = time.monotonic() - t0         # container start to the first answered scrape
        for _ in range(20):                      # a moment when the kernel did not move
            k0, c0 = _host_stats(), _host_count()
            m = s.scrape()
            k1, c1 = _host_stats(), _host_count()
            if k0 == k1 and c0 == c1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the host's conntrack counters never stood still")
        assert value(m, "cttrace_conntrack_entries") == c1
        assert value(m, "cttrace_conntrack_entries_limit") == int(
            Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
        for stat in ("drop", "insert_failed", "early_drop"):
            assert value(m, "cttrace_conntrack_stat_total", stat=stat) == k1[stat], stat
        info = [k for k in m if k[0] == "cttrace_info"]
        assert len(info) == 1 and dict(info[0][1])["backend"] == "tracepoint", info
        with open(f"/proc/{s.pid()}/status") as f:
            status = f.read()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) // 1024
        # the process holds exactly the DaemonSet's capabilities, under a seccomp filter
        want = sum(1 << ALL_CAPS.index(c) for c in CAPS)
        for kind in ("CapEff", "CapPrm", "CapBnd"):
            got = int(re.search(kind + r":\s+([0-9a-f]+)", status).group(1), 16)
            assert got == want, (kind, [c for i, c in enumerate(ALL_CAPS) if got >> i & 1])
        assert re.search(r"Seccomp:\s+(\d)", status).group(1) == "2"
        nnp = re.search(r"NoNewPrivs:\s+(\d)", status).group(1)
        print(f"\nserve in the image: RSS {rss} MiB; NoNewPrivs {nnp}; first scrape {started:.1f} s "
              "after the start, with no headers from the node")
        (LOGS / "serve-rss").write_text(f"{rss}\n")
        (LOGS / "serve-start").write_text(f"{started:.1f}\n")
    finally:
        code = s.stop()
    assert code == 0, s.output()                 # SIGTERM is a clean exit


def test_table_full_in_a_namespace_matches_the_kernel(lab):
    """The DaemonSet plus CAP_SYS_ADMIN (its comment: for `--netns` and pod
    names), serving the lab node's table while the lab fills it."""
    s = Serve(caps=CAPS + ["SYS_ADMIN"], extra=("--netns", lab.node, "--interval", "0.5"))
    try:
        assert s.wait_ready(), s.output()
        lab.tcp_established(lab.containers[1], 25)
        time.sleep(1.2)
        q = ("cttrace_conntrack_drops_total", {"reason": "table_full"})
        d0, k0 = value(s.scrape(), q[0], **q[1]), lab.node_stats()
        r = lab.table_full(lab.containers[0], k=200, admit=80)
        k1 = lab.node_stats()
        time.sleep(1.5)                          # past one fold of the per-source counters
        m = s.scrape()
        assert value(m, q[0], **q[1]) - d0 == k1["drop"] - k0["drop"] == r.kernel_drop > 0
        assert value(m, "cttrace_conntrack_entries") == lab.node_count()
        src = lab.container_ip(lab.containers[0])
        assert value(m, "cttrace_source_drops_total", source=src, container=lab.containers[0]) \
            == len(r.dropped), {k: v for k, v in m.items() if k[0] == "cttrace_source_drops_total"}
        held = {dict(k[1]).get("container"): v for k, v in m.items() if k[0] == "cttrace_source_entries"}
        assert held.get(lab.containers[1]) == 25, held
    finally:
        code = s.stop()
    assert code == 0, s.output()


@pytest.mark.parametrize("cap", CAPS)
def test_each_capability_is_needed(cap):
    line = Serve(caps=[c for c in CAPS if c != cap]).refused()
    print(f"\nwithout CAP_{cap}: {line}")


def test_another_namespace_needs_sys_admin(lab):
    line = Serve(extra=("--netns", lab.node)).refused()
    assert "CAP_SYS_ADMIN" in line, line


@pytest.mark.parametrize("syscall", ["bpf", "perf_event_open", "setns"])
def test_each_added_syscall_is_needed(syscall, lab, tmp_path):
    """The profile's additions to Docker's default, taken away one at a time
    (setns with what needs it: CAP_SYS_ADMIN and --netns)."""
    prof = json.loads((DEPLOY / "seccomp.json").read_text())
    allowed = [n for rule in prof["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
               for n in rule["names"]]
    assert syscall in allowed
    for rule in prof["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n != syscall]
    prof["syscalls"] = [r for r in prof["syscalls"] if r["names"]]
    weaker = LOGS / f"seccomp-without-{syscall}.json"
    weaker.write_text(json.dumps(prof))
    if syscall == "setns":
        s = Serve(caps=CAPS + ["SYS_ADMIN"], seccomp=weaker, extra=("--netns", lab.node))
    else:
        s = Serve(seccomp=weaker)
    print(f"\nwithout {syscall}: {s.refused()}")
