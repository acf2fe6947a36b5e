"""Debian's Chromium for the tests that drive a real browser, installed with apt when missing.

Playwright's own browser download cannot work on this closed network, so the tests use
`/usr/bin/chromium`; the `chromium_executable` fixture (tests/conftest.py) installs it once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Chromium makes no outside connections on a closed network (they would be refused, noisily).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def ensure_chromium() -> Path:
    """The Chromium executable, installed with apt-get first if missing; fails the test if not."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing and apt-get is not available to install it.")
        log = _install_chromium()
        if not CHROMIUM.exists():
            pytest.fail(
                f"The browser tests need Debian's Chromium at {CHROMIUM}, and installing it "
                f"failed. Install it yourself (apt-get install -y chromium) and re-run.\n{log}"
            )
    return CHROMIUM


def _install_chromium() -> str:
    """apt-get install chromium; the output, for the failure message if it did not work."""
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for command in (
        ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", "chromium"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", "chromium"],
    ):
        if CHROMIUM.exists():
            break
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=900, check=False
        )
        log.append(f"$ {' '.join(command)} → {result.returncode}\n{result.stderr[-1500:]}")
    return "\n".join(log)
