"""Applying and checking Alembic migrations shipped inside the package.

Both the `sora2 db` commands and the api at start use these on the async engine (Alembic runs
synchronously on the connection through `run_sync`), so no synchronous driver is needed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from sora2.api.db.engine import Database

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
UPGRADE_COMMAND = "sora2 db upgrade"


class PendingMigrations(Exception):
    """The database schema is behind the code."""

    def __init__(self, pending: list[str]) -> None:
        super().__init__(
            f"the database has {len(pending)} pending migration(s) ({', '.join(pending)}); "
            f"apply them with `{UPGRADE_COMMAND}` before starting"
        )
        self.pending = pending


def alembic_config() -> Config:
    return Config(str(ALEMBIC_INI))


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _pending(connection: Connection) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    current = set(MigrationContext.configure(connection).get_current_heads())
    pending: list[str] = []
    for head in script.get_heads():
        for revision in script.iterate_revisions(head, "base"):
            if revision.revision in current:
                break
            pending.append(revision.revision)
    return list(reversed(pending))


async def upgrade(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def pending_migrations(database: Database) -> list[str]:
    """Revisions not yet applied, oldest first (empty when the schema is current)."""
    async with database.engine.connect() as connection:
        return await connection.run_sync(_pending)


async def prepare_schema(database: Database, *, apply: bool) -> None:
    """Apply pending migrations (`apply`), or refuse to go on while any are pending."""
    if apply:
        await upgrade(database)
        return
    pending = await pending_migrations(database)
    if pending:
        raise PendingMigrations(pending)
