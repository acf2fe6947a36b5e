"""Applying and checking Alembic migrations shipped inside the package.

Both the `sora2 db` commands and the api at start use these on the async engine (Alembic runs
synchronously on the connection through `run_sync`), so no synchronous driver is needed.

Alembic itself is imported only when there is work for it: at start, the usual case (schema
current) is answered by reading `alembic_version` and the revision ids in the migration files,
which keeps about half a second of imports off every api and worker start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from sora2.api.db.engine import Database

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
VERSIONS_DIR = Path(__file__).with_name("migrations") / "versions"
UPGRADE_COMMAND = "sora2 db upgrade"
_REVISION = re.compile(r"^revision: str = [\"'](\w+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision: [^=]+= [\"'](\w+)[\"']", re.MULTILINE)


class PendingMigrations(Exception):
    """The database schema is behind the code."""

    def __init__(self, pending: list[str]) -> None:
        super().__init__(
            f"the database has {len(pending)} pending migration(s) ({', '.join(pending)}); "
            f"apply them with `{UPGRADE_COMMAND}` before starting"
        )
        self.pending = pending


def alembic_config() -> Config:
    from alembic.config import Config

    return Config(str(ALEMBIC_INI))


def head_revision() -> str | None:
    """The one revision no migration builds on, read from the files (None if not exactly one)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS_DIR.glob("*.py"):
        source = path.read_text()
        revisions.update(_REVISION.findall(source))
        parents.update(_DOWN_REVISION.findall(source))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def schema_is_current(database: Database) -> bool:
    """True when the database is at the head revision (cheap: one query, no Alembic import)."""
    head = head_revision()
    if head is None:
        return False
    try:
        async with database.engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return {str(row[0]) for row in rows} == {head}
    except DBAPIError:  # no alembic_version table yet: a fresh database
        return False


def _upgrade(connection: Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _pending(connection: Connection) -> list[str]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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
    if await schema_is_current(database):
        return
    if apply:
        await upgrade(database)
        return
    pending = await pending_migrations(database)
    if pending:
        raise PendingMigrations(pending)
