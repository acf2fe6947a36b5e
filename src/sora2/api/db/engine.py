"""One engine and session factory per process, tuned for SQLite or PostgreSQL.

SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout for other processes
(a `sora2 serve worker`), and every transaction opened with `BEGIN IMMEDIATE` on a single pooled
connection. A deferred transaction that reads and then writes can fail at once with SQLITE_BUSY when
another writer committed in between; taking the write lock up front turns that into a short wait.
In one process the single connection makes requests queue on the pool instead of on file locks.
Reads (`read_session` and `read_connection`, which GET requests use) go through a second small
pool of read-only connections with ordinary deferred transactions: in WAL mode they read a
consistent snapshot while a write is in progress, so listing videos never waits behind a create
or a sign-in.
On PostgreSQL both are the same engine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from sora2.api.db.transaction import owned

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_READERS = 4


class RollingBackConnection(sqlite3.Connection):
    """A sqlite3 connection whose `close` ends its transaction first.

    SQLAlchemy closes a connection whose task was cancelled mid-statement (a stopping worker, a
    shutdown) without a rollback. Python's `close` is SQLite's `close_v2`: while a cursor of the
    interrupted statement is still alive, the connection lingers as a zombie *with its
    transaction open*, so the write lock stays held until the garbage collector finds that
    cursor, and every other writer fails with "database is locked". A ROLLBACK is allowed with
    statements pending (they are aborted) and releases the lock at once.
    """

    def close(self) -> None:
        if self.in_transaction:
            self.rollback()
        super().close()


# Every SQLite connection of ours, SQLAlchemy's (through aiosqlite) and the hot routes' own.
SQLITE_CONNECT_ARGS: dict[str, Any] = {"factory": RollingBackConnection}


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine: AsyncEngine = self._create_engine(url, echo=echo)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.read_engine: AsyncEngine = (
            self._create_sqlite_reader(url, echo=echo) if self.is_sqlite else self.engine
        )
        self.read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)

    def _create_engine(self, url: str, *, echo: bool) -> AsyncEngine:
        if not self.is_sqlite:
            return create_async_engine(
                url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            echo=echo,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            connect_args=SQLITE_CONNECT_ARGS,
        )
        _tune_sqlite(engine)
        return engine

    def _create_sqlite_reader(self, url: str, *, echo: bool) -> AsyncEngine:
        engine = create_async_engine(
            url,
            echo=echo,
            pool_size=SQLITE_READERS,
            max_overflow=0,
            pool_timeout=60,
            connect_args=SQLITE_CONNECT_ARGS,
        )
        _tune_sqlite_reader(engine)
        return engine

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction this block owns: committed when the block returns,
        rolled back if it raises (with the hooks of `db.transaction`). The worker, the outbox
        drain and the CLI write through this; requests through `deps.get_session`."""
        async with self.sessions() as session, owned(session):
            yield session

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session for reading only (on SQLite, a read-only connection that never waits)."""
        async with self.read_sessions() as session:
            yield session

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection for reading only: like `read_session`, without the ORM's upkeep."""
        async with self.read_engine.connect() as connection:
            yield connection

    async def ping(self) -> None:
        # Through a reader: a health check must not queue behind writes on SQLite's one writer.
        async with self.read_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _apply_pragmas(dbapi_connection: Any, *extra: str) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA synchronous=NORMAL",
        *extra,
    ):
        cursor.execute(pragma)
    cursor.close()


def _tune_sqlite_reader(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # A write through a reader would be a bug: make SQLite refuse it.
        _apply_pragmas(dbapi_connection, "PRAGMA query_only=ON")


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        _apply_pragmas(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
