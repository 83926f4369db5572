"""Package tests: cttrace's .deb installed by apt into a clean Debian 12 root
(debootstrap minbase, cached by scripts/debian-base: no cttrace, no pip
packages), with every dependency from Debian's archive alone, then run from
that install, never from the checkout.

The root shares this host's kernel: /proc, /sys (with tracefs, bpffs and
BTF under it) and /dev are bound in, and the host's kernel header tree
(/usr/src, /lib/modules, read-only) lets BCC compile, as scripts/setup
links it. CTTRACE_DEB=path tests that package instead of building one with
scripts/build-deb. Root only; tests/host's lab makes the traffic."""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("debootstrap", "dpkg-buildpackage", "lintian", "chroot")


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (chroot, mounts, apt)"
    elif missing := [t for t in TOOLS if not shutil.which(t)]:
        reason = f"needs {', '.join(missing)} (scripts/setup --test installs them)"
    for item in items:
        if "tests/package/" in str(item.fspath):
            item.add_marker(pytest.mark.root)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Chroot:
    path: Path
    deb: Path
    install_seconds: float
    packages_before: set
    files: list           # dpkg -L cttrace, right after the install

    def run(self, *cmd, check=True, timeout=300, **kw):
        env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
               "DEBIAN_FRONTEND": "noninteractive"}
        env.update(kw.pop("env", {}))
        r = subprocess.run(["chroot", str(self.path), *cmd], capture_output=True, text=True,
                           env=env, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-3000:]}")
        return r

    def packages(self) -> set:
        r = self.run("dpkg-query", "-W", "-f", "${Package} ${Status}\n")
        return {l.split()[0] for l in r.stdout.splitlines() if l.endswith(" installed")}


def _mount(*args) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _build_deb(tmp: Path) -> Path:
    if os.environ.get("CTTRACE_DEB"):
        return Path(os.environ["CTTRACE_DEB"])
    r = subprocess.run([str(ROOT / "scripts" / "build-deb"), str(tmp)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def chroot(tmp_path_factory):
    from tracer.kernel.features import mount_tracefs
    mount_tracefs()         # before /sys is bound in, so that the root sees it
    tmp = tmp_path_factory.mktemp("deb")
    deb = _build_deb(tmp)
    r = subprocess.run([str(ROOT / "scripts" / "debian-base")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    base = r.stdout.strip()
    root = tmp / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xzf", base], check=True)
    mounts = []
    try:
        for src, dst, how in (("proc", "proc", ["-t", "proc"]), ("/sys", "sys", ["--rbind"]),
                              ("/dev", "dev", ["--rbind"]), ("tmpfs", "run", ["-t", "tmpfs"]),
                              ("/usr/src", "usr/src", ["--bind", "-o", "ro"]),
                              ("/lib/modules", "lib/modules", ["--bind", "-o", "ro"])):
            (root / dst).mkdir(parents=True, exist_ok=True)
            _mount(*how, src, str(root / dst))
            mounts.append(root / dst)
            if how[0] == "--rbind":
                _mount("--make-rslave", str(root / dst))
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        shutil.copy(deb, root / "tmp")
        c = Chroot(root, root / "tmp" / deb.name, 0.0, set(), [])
        c.run("apt-get", "update", "-q")
        # the test's own tools, not cttrace's: man, and systemd-analyze to
        # verify the unit where it is installed
        c.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "man-db", "systemd", timeout=600)
        c.packages_before = c.packages()
        t0 = time.monotonic()
        c.run("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}", timeout=900)
        c.install_seconds = time.monotonic() - t0
        c.files = c.run("dpkg", "-L", "cttrace").stdout.split()
        yield c
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-R", "-l", str(m)], capture_output=True)
        if not any(str(root) in l for l in Path("/proc/mounts").read_text().splitlines()):
            shutil.rmtree(root, ignore_errors=True)
