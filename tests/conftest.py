"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.debian import CHROMIUM, ensure_installed
from tests.fakes.s3 import S3Server, running_s3_server


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    return ensure_installed(str(CHROMIUM), "chromium")


@pytest.fixture(scope="session")
def nginx_executable() -> Path:
    return ensure_installed("nginx", "nginx")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on an ephemeral loopback port, shared by the session (a bucket a test)."""
    with running_s3_server() as server:
        yield server
