"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.debian import CHROMIUM, ensure_installed


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    return ensure_installed(str(CHROMIUM), "chromium")


@pytest.fixture(scope="session")
def nginx_executable() -> Path:
    return ensure_installed("nginx", "nginx")
