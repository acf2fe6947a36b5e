"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chromium import ensure_chromium


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    return ensure_chromium()
