"""Tools the tests need from Debian's packages (Chromium, nginx), installed with apt when missing.

Playwright's own browser download cannot work on this closed network, so the browser tests use
Debian's `/usr/bin/chromium`; the proxy bench's reference proxy is Debian's nginx. Each is
installed once, by the fixtures in tests/conftest.py, and a failed install fails the test with
apt's own words rather than skipping it.
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


def ensure_installed(command: str, package: str) -> Path:
    """The path of `command`, after `apt-get install package` if it is missing; fails the test
    (naming what to run) when it cannot be installed."""
    found = shutil.which(command)
    if found is None:
        if shutil.which("apt-get") is None:
            pytest.fail(f"{command} is missing and apt-get is not available to install it.")
        log = _apt_install(command, package)
        found = shutil.which(command)
        if found is None:
            pytest.fail(
                f"These tests need {command} from Debian's {package} package, and installing it "
                f"failed. Install it yourself (apt-get install -y {package}) and re-run.\n{log}"
            )
    return Path(found)


def _apt_install(command: str, package: str) -> str:
    """apt-get install `package` (updating the lists once if needed); the output, for a failure."""
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", package]
    log = []
    for step in (install, ["apt-get", "update"], install):
        if shutil.which(command) is not None:
            break
        result = subprocess.run(
            step, env=environment, capture_output=True, text=True, timeout=900, check=False
        )
        log.append(f"$ {' '.join(step)} → {result.returncode}\n{result.stderr[-1500:]}")
    return "\n".join(log)
