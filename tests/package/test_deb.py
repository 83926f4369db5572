"""The Debian package as an operator gets it: `apt install ./cttrace_*.deb`
in a clean Debian 12 root, every dependency from Debian's archive; then
the installed program (not the checkout) answers, documents itself,
completes, reads an export, and counts table-full drops exactly as the
kernel does; purging it leaves nothing behind. Runs last of all here: the
purge."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.host import conftest as host
from tests.host.conftest import lab_fixture
from tests.lab import KNOWN
from tracer import __version__
from tracer.cli import COMMANDS

needs_tracepoint = host.needs_tracepoint      # the host tests' fixture, used here by name

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

lab = lab_fixture("ctlabp-", containers=2)


def test_installed_from_debians_archive_alone(chroot):
    print(f"\npackage: {chroot.deb.name} {chroot.deb.stat().st_size // 1024} KiB; "
          f"apt install took {chroot.install_seconds:.1f} s, "
          f"pulling {len(chroot.packages() - chroot.packages_before) - 1} packages")
    sources = chroot.run("sh", "-c", "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; true").stdout
    assert [l.split()[1] for l in sources.splitlines() if l.startswith("deb ")] == \
        [os.environ.get("CTTRACE_DEBIAN_MIRROR", "http://deb.debian.org/debian")]     # scripts/debian-base's
    assert chroot.run("python3", "-m", "pip", "--version", check=False).returncode != 0   # no pip at all
    # Debian 12's own libraries are what it runs on
    r = chroot.run("python3", "-c", "import click, rich, prometheus_client, bcc, importlib.metadata as m;"
                   "print(click.__version__, m.version('rich'), m.version('prometheus_client'))")
    assert r.stdout.split() == ["8.1.3", "13.3.1", "0.16.0"]
    assert "/usr/bin/cttrace" in chroot.files
    r = chroot.run("python3", "-c", "import tracer; print(tracer.__file__)")
    assert r.stdout.startswith("/usr/lib/python3/dist-packages/tracer/")


def test_version_names_the_commit_it_was_built_from(chroot):
    r = chroot.run("cttrace", "--version")
    want = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12",
                           "--exclude", "*"], capture_output=True, text=True)
    if want.returncode == 0:
        assert r.stdout.strip() == f"cttrace {__version__} (commit {want.stdout.strip()})"
    else:
        assert r.stdout.strip() == f"cttrace {__version__}"


def test_man_pages_for_cttrace_and_every_command(chroot):
    r = chroot.run("man", "-P", "cat", "cttrace", env={"MANWIDTH": "80"})
    assert "cttrace - Trace and analyse" in " ".join(r.stdout.split())
    for section in ("SYNOPSIS", "OPTIONS", "COMMANDS", "EXAMPLES", "SEE ALSO"):
        assert f"\n{section}\n" in r.stdout, section
    for cmd in COMMANDS:
        r = chroot.run("man", "-P", "cat", "8", f"cttrace-{cmd}", env={"MANWIDTH": "200"})
        assert "\nEXAMPLES\n" in r.stdout and f"cttrace {cmd}" in r.stdout, cmd
        # every option `--help` lists is in the page
        helptext = chroot.run("cttrace", cmd, "--help").stdout
        for opt in set(re.findall(r"^\s+(?:-\w, )?(--[a-z-]+)", helptext, re.M)):
            assert opt in r.stdout, (cmd, opt)


def test_bash_completes_to_top(chroot):
    script = ("source /usr/share/bash-completion/completions/cttrace; "
              "COMP_WORDS=(cttrace to); COMP_CWORD=1; _cttrace_completion cttrace; "
              "printf '%s\\n' \"${COMPREPLY[@]}\"; complete -p cttrace")
    r = chroot.run("bash", "-c", script)
    lines = r.stdout.splitlines()
    assert lines[0] == "top" and len(lines) == 2, r.stdout
    assert lines[1] == "complete -o nosort -F _cttrace_completion cttrace"
    # options too, from the installed command itself
    r = chroot.run("bash", "-c", script.replace("(cttrace to)", "(cttrace drops --rea)").replace(
        "COMP_CWORD=1", "COMP_CWORD=2"))
    assert "--reason" in r.stdout.splitlines()
    zsh = (chroot.path / "usr/share/zsh/vendor-completions/_cttrace").read_text()
    assert zsh.startswith("#compdef cttrace") and "_CTTRACE_COMPLETE=zsh_complete" in zsh


def test_snapshot_of_an_export(chroot):
    shutil.copy(DATA / "known-acct.conntrack-L-extended", chroot.path / "tmp")
    r = chroot.run("cttrace", "snapshot", "--file", "/tmp/known-acct.conntrack-L-extended", "--json")
    out = json.loads(r.stdout)
    for key, want in KNOWN.items():
        assert out[key] == want, key
    r = chroot.run("cttrace", "snapshot", "--file", "/nonexistent/table.txt", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_features_from_the_install(chroot, needs_tracepoint):
    r = chroot.run("cttrace", "features", "--json")
    out = json.loads(r.stdout)
    assert out["checks"]["bcc"]["ok"], out["checks"]["bcc"]
    assert out["backend"] in ("tracepoint", "kprobe")


def test_drops_table_full_matches_the_kernel(chroot, needs_tracepoint, lab, tmp_path):
    """A table-full flood in the lab's node namespace, traced by the
    installed cttrace: every dropped flow tuple by tuple, and the kernel's
    own `drop` delta."""
    nsfile = chroot.path / "run" / "netns" / lab.node
    nsfile.parent.mkdir(parents=True, exist_ok=True)
    nsfile.touch()
    subprocess.run(["mount", "--bind", f"/run/netns/{lab.node}", str(nsfile)], check=True)
    ready = chroot.path / "tmp" / "drops.ready"
    ready.unlink(missing_ok=True)
    try:
        with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
            p = subprocess.Popen(["chroot", str(chroot.path), "cttrace", "drops", "--json", "--duration", "8",
                                  "--netns", lab.node, "--ready-file", "/tmp/drops.ready"],
                                 stdout=out, stderr=err, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                              "LANG": "C.UTF-8"})
            try:
                deadline = time.monotonic() + 90
                while not ready.exists():
                    assert p.poll() is None and time.monotonic() < deadline, \
                        f"cttrace drops did not start: {open(tmp_path / 'err').read()}"
                    time.sleep(0.05)
                # room for this host's own traffic (apt's connections just now)
                admit = max(60, int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text()) + 110)
                r = lab.table_full(lab.containers[0], k=admit + 90, admit=admit)
                assert p.wait(30) == 0, open(tmp_path / "err").read()
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            out.seek(0)
            err.seek(0)
            events = [json.loads(l) for l in out if l.strip()]
            stderr = err.read()
    finally:
        subprocess.run(["umount", str(nsfile)], check=True)
        nsfile.unlink()
    full = [e for e in events if e["reason"] == "table_full"]
    assert len(full) == r.kernel_drop == len(r.dropped) > 0, stderr
    assert {(e["src"], e["sport"], e["dst"], e["dport"]) for e in full} == \
           {(f.src, f.sport, f.dst, f.dport) for f in r.dropped}
    summary = json.loads(stderr.strip().splitlines()[-1])["summary"]
    assert summary["table_full"][str(os.stat(f"/run/netns/{lab.node}").st_ino)] == r.kernel_drop
    assert "Traceback" not in stderr


def test_exporter_unit_verifies_and_is_least_privileged(chroot):
    unit = "/lib/systemd/system/cttrace-exporter.service"
    text = (chroot.path / unit.lstrip("/")).read_text()
    assert "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN\n" in text
    for line in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "EnvironmentFile=-/etc/default/cttrace-exporter"):
        assert f"\n{line}\n" in text, line
    assert (chroot.path / "etc/default/cttrace-exporter").read_text().count("ARGS=") == 1
    r = chroot.run("systemd-analyze", "verify", unit, check=False)
    assert r.returncode == 0 and "cttrace" not in r.stderr, r.stderr
    # not enabled or started by the install
    assert not list((chroot.path / "etc/systemd/system").rglob("cttrace*"))


def test_purge_leaves_nothing_behind(chroot):
    chroot.run("cttrace", "snapshot", "--file", "/tmp/known-acct.conntrack-L-extended", check=False)
    chroot.run("apt-get", "purge", "-y", "-q", "cttrace")
    left = [f for f in chroot.files if not os.path.isdir(chroot.path / f.lstrip("/"))
            and os.path.lexists(chroot.path / f.lstrip("/"))]
    assert not left, left
    # (not /var/cache/man: man-db's own cache of the pages read above, which
    # its daily job prunes)
    r = chroot.run("find", "/", "-xdev", "(", "-path", "/tmp", "-o", "-path", "/proc", "-o", "-path", "/sys",
                   "-o", "-path", "/var/cache/man", ")", "-prune", "-o", "-name", "*cttrace*", "-print")
    assert r.stdout.split() == [], r.stdout
    assert not (chroot.path / "run" / "cttrace").exists()
    assert not (chroot.path / "usr/lib/python3/dist-packages/tracer").exists()
    # and its dependencies go with it: the root's packages are what they were
    chroot.run("apt-get", "autoremove", "--purge", "-y", "-q")
    assert chroot.packages() == chroot.packages_before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
