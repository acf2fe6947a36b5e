"""Alembic environment: runs on the connection that `sora2.api.db.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from sora2.api.db import models  # noqa: F401 - registers every table on Base.metadata
from sora2.api.db.base import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `sora2 db upgrade`, which supplies the connection")
run_migrations(connection)
