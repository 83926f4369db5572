"""scripts/setup elsewhere than Debian 12: one line saying what to install."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_setup_on_another_system_says_what_to_install_in_one_line(tmp_path):
    for text, name in (('NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40"\n',
                        "Fedora Linux 40"),
                       ('ID=debian\nVERSION_ID="11"\nPRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\n',
                        "Debian GNU/Linux 11 (bullseye)")):
        osr = tmp_path / "os-release"
        osr.write_text(text)
        r = subprocess.run([str(ROOT / "scripts" / "setup")], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "CTTRACE_OS_RELEASE": str(osr)}, timeout=30)
        assert r.returncode == 1 and r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"setup: this is not Debian 12 ({name}): install ")
        for what in ("BCC", "click>=8.1.3", "rich>=13.3.1", "prometheus-client>=0.16", "--no-deps"):
            assert what in lines[0], what
