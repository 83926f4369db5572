"""Headless Chromium for the HTML report's tests: screenshots and the
rendered DOM. Screenshots are kept as artefacts of the run in
$CTTRACE_ARTIFACTS (default /tmp/cttrace-artifacts), never committed."""

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def artifacts() -> Path:
    d = Path(os.environ.get("CTTRACE_ARTIFACTS", "/tmp/cttrace-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def screenshot(page: Path, out: Path, profile: Path, size: str = "1000,2600") -> Path:
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--screenshot={out}", page.as_uri()], capture_output=True, timeout=120)
    assert out.exists(), "Chromium took no screenshot"
    return out


def dump_dom(page: Path, profile: Path) -> str:
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout


def print_pdf(page: Path, out: Path, profile: Path) -> Path:
    """The page as Chromium prints it (the print style sheet applies)."""
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer",
                    f"--print-to-pdf={out}", page.as_uri()], capture_output=True, timeout=120)
    assert out.exists() and out.read_bytes()[:5] == b"%PDF-", "Chromium printed no PDF"
    return out
