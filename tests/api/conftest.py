"""The api suite runs once on SQLite and once on PostgreSQL (one parametrized fixture).

On PostgreSQL the session creates its own database `sora2_test_<random>` and drops it at the end,
so engineers and CI runs sharing the server never collide. Tables are emptied before each test.
`SORA2_TEST_DATABASES=sqlite` (or `postgresql`) narrows the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import text

from sora2.api.db import Base, Database
from sora2.api.db import models as _models  # noqa: F401 - every table on Base.metadata
from sora2.api.db.migrate import upgrade
from sora2.settings import Settings, load_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, running_api

POSTGRES_ADMIN_DSN = os.environ.get(
    "SORA2_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SQLITE_TEMPLATE = "migrated-template.db"
BACKENDS = [
    name
    for name in ("sqlite", "postgresql")
    if name in os.environ.get("SORA2_TEST_DATABASES", "sqlite,postgresql")
]


async def _postgres(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await upgrade(database)
    finally:
        await database.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database for this test session (plain URL, as a user would write it)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "api.db"
        asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
        shutil.copyfile(path, path.with_name(SQLITE_TEMPLATE))
        yield f"sqlite:///{path}"
        return
    name = f"sora2_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_postgres(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        asyncio.run(_migrate(url.replace("postgresql://", "postgresql+asyncpg://", 1)))
        yield url
    finally:
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def is_postgres(settings: Settings) -> bool:
    return settings.resolved_database_url.startswith("postgresql")


async def empty_tables(url: str) -> None:
    database = Database(url)
    try:
        async with database.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(text(f"DELETE FROM {table.name}"))
    finally:
        await database.dispose()


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "data_dir": data_dir,
        "log_dir": data_dir / "logs",
        "jwt_secret": "test-secret-" + "x" * 40,
        "password_hash_memory_kib": 1024,
        "refresh_reuse_grace_seconds": 0,
        "api_embedded_worker": False,
        "login_limit_per_ip": 10_000,
        "login_limit_per_account": 10_000,
        "register_limit_per_ip": 10_000,
        "worker_idle_poll_ms": 20,
        "worker_provider_poll_ms": 20,
        "worker_lease_seconds": 5,
        "job_retry_base_ms": 20,
        "job_retry_max_ms": 100,
        "sse_poll_interval_ms": 50,
        "frontend_url": "http://app.example:3200",
    }
    return load_settings(**(values | overrides))


@pytest.fixture
async def settings(database_url: str, tmp_path: Path) -> Settings:
    if database_url.startswith("sqlite:///"):
        # Each test on its own copy of the migrated file: a connection an earlier test left
        # mid-transaction cannot lock this one out ("database is locked" at set-up in CI).
        template = Path(database_url.removeprefix("sqlite:///")).with_name(SQLITE_TEMPLATE)
        own = tmp_path / "own-api.db"
        shutil.copyfile(template, own)
        return make_settings(f"sqlite:///{own}", tmp_path)
    made = make_settings(database_url, tmp_path)
    await empty_tables(made.resolved_database_url)
    return made


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
async def api(settings: Settings, provider: ScriptedProvider) -> AsyncIterator[RunningApi]:
    async with running_api(settings, provider) as running:
        yield running


@pytest.fixture
async def catalog_api(
    settings: Settings, tmp_path: Path, provider: ScriptedProvider
) -> AsyncIterator[RunningApi]:
    """The api on a catalog file: `veo-3.1` (takes images, no remix) and `local-draft` (both)."""
    from tests.fakes.catalogs import LOCAL_ONLY_CATALOG, write_catalog

    path = write_catalog(tmp_path, LOCAL_ONLY_CATALOG)
    async with running_api(settings.model_copy(update={"models_file": path}), provider) as running:
        yield running
