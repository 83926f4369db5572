"""`cttrace features` on each kernel of the matrix: parseable JSON even when
BCC complains (it prints on stdout), the backend it names can start, no
contradiction between the checks and the choice, and every missing piece
named with what cttrace does instead. In the VM booted without the kernel's
own headers (scripts/vmtest, CTTRACE_VM_NOHEADERS), another header tree is
found and BCC compiles with it."""

import json
import os
import subprocess

from tests.host.conftest import CTTRACE
from tracer.kernel import features as F


def _features():
    # as a user starts it (the backend fixture may have set BCC_KERNEL_SOURCE here)
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    r = subprocess.run([CTTRACE, "features", "--json"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)          # the whole stdout is one JSON object


def test_features_json_is_clean_and_consistent():
    d = _features()
    c = d["checks"]
    assert d["backend"] == "kprobe", d["backend_reason"]
    for need in ("privileges", "bpf", "btf", "tracefs", "kprobes", "headers", "bcc"):
        assert c[need]["ok"], (need, c[need]["detail"])
    assert "probeable" in c["kprobes"]["detail"]
    assert "no usable kprobes" not in d["backend_reason"]
    assert "fentry not used" in d["backend_reason"]
    # the drop half: by reason (5.17+) or by call site before
    fmt = open("/sys/kernel/tracing/events/skb/kfree_skb/format").read()
    assert c["tracepoint_kfree_skb"]["ok"]
    if "reason" in fmt:
        assert "NETFILTER_DROP" in c["tracepoint_kfree_skb"]["detail"]
    else:
        assert "nf_hook_slow" in c["tracepoint_kfree_skb"]["detail"]
    # the fentry refusal names the real cause on this kernel
    why = c["fentry_backend"]["detail"]
    if not os.path.exists("/sys/kernel/btf/nf_conntrack"):
        assert "no module BTF" in why, why
    else:
        assert "vmlinux BTF only" in why, why


def test_headers_shape():
    d = _features()
    h = d["checks"]["headers"]
    rel = os.uname().release
    if os.environ.get("CTTRACE_VM_NOHEADERS"):
        assert h["ok"] and f"no headers of {rel}" in h["detail"] and "BCC uses" in h["detail"], h
    else:
        assert h["ok"] and "own headers" in h["detail"], h
    assert d["checks"]["bcc"]["ok"], d["checks"]["bcc"]


def test_drop_filter_matches_the_tracepoint():
    how = F.drop_filter()
    fmt = open("/sys/kernel/tracing/events/skb/kfree_skb/format").read()
    assert how is not None
    assert how[0] == ("reason" if "reason" in fmt else "location")
    if how[0] == "location":
        start, size = how[1]["NF_HOOK_SLOW"], how[1]["NF_HOOK_SLOW_SIZE"]
        assert start > 0 and 0 < size < 4096
