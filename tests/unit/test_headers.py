"""tracer/kernel/headers.py on made-up header trees (no root): the kernel's own
tree wins; otherwise the closest version, a Debian split tree merged into
one directory BCC_KERNEL_SOURCE can name; nothing at all names a package."""

import os

import pytest

from tracer.kernel import headers as H


def _split(src, ver):
    """A Debian-like pair: <ver>-amd64 (generated, config) + <ver>-common."""
    amd, common = src / f"linux-headers-{ver}-amd64", src / f"linux-headers-{ver}-common"
    for d in ("include/generated/uapi/linux", "include/config", "arch/x86/include/generated"):
        (amd / d).mkdir(parents=True)
    (amd / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{ver}-amd64"\n')
    (amd / "Makefile").write_text(f"include {common}/Makefile\n")
    for d in ("include/linux", "include/uapi", "arch/x86/include/asm", "arch/x86/include/uapi"):
        (common / d).mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    (common / "Makefile").write_text("# top\n")
    return amd, common


@pytest.fixture
def fake(tmp_path, monkeypatch):
    src, mods, run = tmp_path / "src", tmp_path / "modules", tmp_path / "run"
    src.mkdir()
    mods.mkdir()
    monkeypatch.setattr(H, "SEARCH", (str(src), str(mods)))
    monkeypatch.setattr(H, "MODULES", str(mods))
    monkeypatch.setattr(H, "RUN_DIR", str(run))
    before = os.environ.pop("BCC_KERNEL_SOURCE", None)
    H.forget()
    yield src, mods, run
    H.forget()
    # ensure() sets it in os.environ itself (monkeypatch cannot undo that):
    # cttrace processes started by later tests would inherit a gone tree
    os.environ.pop("BCC_KERNEL_SOURCE", None)
    if before is not None:
        os.environ["BCC_KERNEL_SOURCE"] = before


def test_own_tree_wins(fake):
    src, mods, _ = fake
    amd, _ = _split(src, "5.10.0-46")
    (mods / "5.10.0-46-amd64").mkdir()
    os.symlink(amd, mods / "5.10.0-46-amd64" / "build")
    h = H.ensure("5.10.0-46-amd64")
    assert h.own and "own headers" in h.detail
    assert "BCC_KERNEL_SOURCE" not in os.environ


def test_someone_elses_tree_linked_is_not_called_own(fake):
    src, mods, _ = fake
    amd, _ = _split(src, "6.1.0-56")
    (mods / "6.18.1").mkdir()
    os.symlink(amd, mods / "6.18.1" / "build")
    h = H.ensure("6.18.1")
    assert not h.own and "links to those of 6.1.0-56-amd64" in h.detail
    assert "BCC_KERNEL_SOURCE" not in os.environ       # BCC finds build + source itself


def test_closest_split_tree_is_merged(fake, monkeypatch):
    src, _, run = fake
    _split(src, "6.1.0-56")
    _split(src, "6.12.95+deb12")
    h = H.ensure("6.13.2-custom")
    assert h.path == str(run / "linux-headers-6.12.95+deb12-amd64")
    assert os.environ["BCC_KERNEL_SOURCE"] == h.path
    assert "no headers of 6.13.2-custom" in h.detail and "6.12.95" in h.detail
    merged = run / "linux-headers-6.12.95+deb12-amd64"
    for p in ("include/linux/kconfig.h", "include/generated/utsrelease.h",
              "arch/x86/include/asm", "arch/x86/include/generated", "include/config"):
        assert (merged / p).exists(), p
    assert H.ensure("6.13.2-custom") is h                # made once


def test_nothing_names_the_package(fake):
    h = H.ensure("5.4.0-1-cloud")
    assert h.path is None
    assert "linux-headers-5.4.0-1-cloud" in h.detail and "linux-headers-amd64" in h.detail
    assert "BCC_KERNEL_SOURCE" not in os.environ
