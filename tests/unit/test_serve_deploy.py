"""serve's bounded cardinality, and the deploy/ files checked by real
validators (kubernetes-validate's schemas, promtool)."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tracer.live.exporter import METRICS, SourceSeries

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKER_DEFAULT = "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"


def test_cardinality_is_bounded_and_counters_monotonic():
    k = 20
    s = SourceSeries(k=k, idle=30)
    rnd = random.Random(3)
    cum: dict[str, dict[str, int]] = {}
    live: dict[str, int] = {}
    prev = {m: {} for m in METRICS}
    total = {m: 0 for m in METRICS}
    for step in range(400):                         # 10,000 distinct sources come and go
        now = float(step)
        live = {}                                    # entries expire: only recent sources hold some
        for _ in range(25):
            src = f"10.{step % 250}.{rnd.randrange(250)}.{rnd.randrange(1, 40)}"
            c = cum.setdefault(src, {m: 0 for m in METRICS})
            for m in METRICS:
                n = rnd.randrange(0, 5)
                c[m] += n
                total[m] += n
            live[src] = rnd.randrange(0, 3)
        gone = s.update(now, {k_: dict(v) for k_, v in cum.items()}, live)
        if step % 60 == 0:                           # the exporter's pruning
            gone += s.prunable(live)
        for src in gone:                             # as serve.run forgets them
            s.fold(src)
            cum.pop(src)
            live.pop(src, None)
        for m in METRICS:
            series = s.series(m)
            assert len(series) <= k + 1
            for name, v in series.items():           # no series ever goes down
                assert v >= prev[m].get(name, 0), (m, name)
            assert sum(series.values()) == total[m]  # nothing lost, nothing counted twice
            prev[m] = series
    assert len(cum) < 2000                          # memory follows the live sources


def test_daemonset_validates_against_kubernetes_schemas():
    from kubernetes_validate import validate
    docs = [d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert "DaemonSet" in kinds
    for d in docs:
        validate(d, "1.29", strict=True)           # raises on any schema error
    ds = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert ds["hostNetwork"] and ds["hostPID"]
    sc = ds["containers"][0]["securityContext"]
    caps = sc["capabilities"]
    # the least that works, measured in the image stage (tests/image)
    assert caps["drop"] == ["ALL"] and caps["add"] == ["BPF", "PERFMON", "NET_ADMIN"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/cttrace.json"}


def _daemonset() -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]


def test_metrics_are_not_open_to_the_network():
    """cttrace listens on the node's loopback; the only way in from the
    network is kube-rbac-proxy, which checks the caller's token."""
    ds = _daemonset()
    c = {x["name"]: x for x in ds["containers"]}
    serve = c["cttrace"]
    listen = serve["args"][serve["args"].index("--listen") + 1]
    assert listen.startswith("127.0.0.1:")
    assert not serve.get("ports"), "a port on the cttrace container would be reachable on the node's address"
    probe = serve["livenessProbe"]["httpGet"]
    assert probe["host"] == "127.0.0.1" and f"127.0.0.1:{probe['port']}" == listen
    proxy = c["kube-rbac-proxy"]
    assert f"--upstream=http://{listen}/" in proxy["args"]
    assert any(a.startswith("--secure-listen-address=") for a in proxy["args"])
    assert "--allow-paths=/metrics" in proxy["args"]
    psc = proxy["securityContext"]
    assert psc["runAsNonRoot"] and psc["capabilities"]["drop"] == ["ALL"] and not psc["allowPrivilegeEscalation"]
    port = proxy["ports"][0]
    tmpl = next(d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text())
                if d and d["kind"] == "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert tmpl["prometheus.io/port"] == str(port["containerPort"]) and tmpl["prometheus.io/scheme"] == "https"
    assert yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["scheme"] == "https"
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d}
    reader = docs[("ClusterRole", "cttrace-metrics-reader")]["rules"]
    assert reader == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert ds["serviceAccountName"] == docs[("ClusterRoleBinding", "cttrace-rbac-proxy")]["subjects"][0]["name"]


def test_netns_mount_follows_the_host():
    """Network namespaces made after the pod started (new pods) must be
    visible inside: the mount takes the host's later mounts."""
    m = {v["name"]: v for v in _daemonset()["containers"][0]["volumeMounts"]}
    assert m["run-netns"]["mountPropagation"] == "HostToContainer" and m["run-netns"]["readOnly"]


def test_seccomp_profile():
    """A plain allow-list (no Docker-only conditions, which containerd would
    ignore and so allow), Docker's default for the DaemonSet's
    capabilities plus what BCC needs; nothing that only CAP_SYS_ADMIN
    holders get from Docker's default."""
    prof = json.loads((DEPLOY / "seccomp.json").read_text())
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "SCMP_ARCH_X86_64" in prof["architectures"] and "SCMP_ARCH_AARCH64" in prof["architectures"]
    allowed = set()
    for rule in prof["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet"}, rule
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule:
            allowed.update(rule["names"])
    assert {"bpf", "perf_event_open", "setns", "read", "write", "socket", "recvmsg"} <= allowed
    for name in ("mount", "umount2", "unshare", "pivot_root", "kexec_load", "init_module",
                 "finit_module", "delete_module", "open_by_handle_at", "reboot", "swapon", "syslog"):
        assert name not in allowed, name


def test_seccomp_profile_leaves_out_what_cttrace_does_not_use():
    """ptrace and io_uring: allowed by Docker's default, used by neither
    cttrace nor BCC (the image stage runs serve under this profile)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("seccomp", DEPLOY / "seccomp.py")
    seccomp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seccomp)
    prof = json.loads((DEPLOY / "seccomp.json").read_text())
    named = {n for rule in prof["syscalls"] for n in rule["names"]}
    assert not named & {"ptrace", "io_uring_setup", "io_uring_enter", "io_uring_register"}
    docker = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "ptrace", "io_uring_setup"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["io_uring_enter"], "action": "SCMP_ACT_ALLOW"}]}
    built = seccomp.build(docker, {"CAP_BPF"})
    assert [r["names"] for r in built["syscalls"]][0] == ["read"]
    assert not {n for r in built["syscalls"] for n in r["names"]} & seccomp.NOT_NEEDED


def test_seccomp_resolution():
    """deploy/seccomp.py on a small profile in Docker's format."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("cttrace_deploy_seccomp", DEPLOY / "seccomp.py")
    seccomp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seccomp)
    docker = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["bpf", "mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["s390_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390", "s390x"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}],
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
    ]}
    out = seccomp.build(docker, {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"})
    names = [n for r in out["syscalls"] for n in r["names"]]
    assert sorted(names) == sorted(["read", "arch_prctl", "clone", "bpf", "perf_event_open", "setns"])
    assert out["defaultErrnoRet"] == 1
    clone = next(r for r in out["syscalls"] if r["names"] == ["clone"])
    assert clone["args"] == [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]
    with_admin = seccomp.build(docker, {"CAP_SYS_ADMIN"})
    assert "mount" in [n for r in with_admin["syscalls"] for n in r["names"]]
    assert seccomp.daemonset_caps() == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}


@pytest.mark.skipif(not Path(DOCKER_DEFAULT).exists(),
                    reason="needs Docker's default profile (Debian package golang-github-docker-docker-dev)")
def test_seccomp_json_is_up_to_date():
    r = subprocess.run([sys.executable, str(DEPLOY / "seccomp.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_invalid_manifest_is_caught():
    from kubernetes_validate import validate
    from kubernetes_validate.utils import ValidationError
    bad = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": "not a list"}}}}
    with pytest.raises(ValidationError):
        validate(bad, "1.29", strict=True)


@pytest.mark.skipif(not shutil.which("promtool"), reason="needs promtool (Debian package prometheus)")
def test_prometheus_config_and_rules():
    r = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "check", "config", "--syntax-only", str(DEPLOY / "prometheus.yml")],
                       capture_output=True, text=True, cwd=DEPLOY)
    if "kubernetes_sd_configs not found" in r.stdout + r.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is)")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="needs promtool (Debian package prometheus)")
def test_alert_rules_unit_tests():
    """deploy/alerts_test.yml: a pod filling the table, SNAT exhaustion and
    the forecast, against series shaped like a real node's."""
    r = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], capture_output=True,
                       text=True, cwd=DEPLOY)
    assert r.returncode == 0, r.stdout + r.stderr


def test_api_token_only_in_the_proxy_and_tracefs_read_only():
    """The token that may create TokenReviews and SubjectAccessReviews is
    mounted where kube-rbac-proxy runs, not into cttrace's container; tracefs
    is read-only (the image stage runs serve with these mounts)."""
    ds = _daemonset()
    assert ds["automountServiceAccountToken"] is False
    c = {x["name"]: x for x in ds["containers"]}
    vols = {v["name"]: v for v in ds["volumes"]}
    token_vols = {n for n, v in vols.items()
                  if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))}
    assert token_vols == {"api-token"}
    mounts = {n: {m["name"]: m for m in x.get("volumeMounts", [])} for n, x in c.items()}
    assert "api-token" not in mounts["cttrace"]
    m = mounts["kube-rbac-proxy"]["api-token"]
    assert m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" and m["readOnly"]
    assert mounts["cttrace"]["tracefs"]["readOnly"] is True
