"""serve's bounded cardinality, and the deploy/ files checked by real
validators (kubernetes-validate's schemas, promtool)."""

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tracer.serve import METRICS, SourceSeries

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


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
    caps = ds["containers"][0]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and {"BPF", "PERFMON", "NET_ADMIN"} <= set(caps["add"])
    assert ds["containers"][0]["securityContext"]["privileged"] is False


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
