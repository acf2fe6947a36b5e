"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from sora2.api.db import Base, Database
from sora2.api.db.migrate import head_revision
from sora2.settings import Settings


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_a_migrated_database_matches_the_models(settings: Settings) -> None:
    database = Database(settings.resolved_database_url)  # migrated to head by the fixture
    try:
        async with database.engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await database.dispose()
    # A change to a model without a migration (or the reverse) shows up here, named.
    assert differences == []


def test_the_migrations_have_one_head() -> None:
    assert head_revision() is not None
