"""Statements run by the database driver itself, for the api's hot routes (`sora2.api.hot_routes`).

A signed-in read through SQLAlchemy costs more CPU in statement execution, result processing and
connection upkeep than in the rest of the request: on PostgreSQL every checkout pings and every
read runs BEGIN … ROLLBACK; on SQLite each statement is three or four hops to aiosqlite's thread.
`Rows` runs one plain SQL statement and hands back plain tuples:

- PostgreSQL: an asyncpg pool of its own. asyncpg prepares each statement once per connection
  and caches it; a checkout neither pings nor opens a transaction, and the release skips
  asyncpg's reset query (these connections never change session state: they only SELECT).
- SQLite: one read-only stdlib `sqlite3` connection, used on the event loop's own thread. A
  read of a few rows by index takes microseconds, less than a hop to a thread would; in WAL mode
  a reader never waits for a writer (the busy timeout only covers a checkpoint's brief lock).

A create's few writes (`guarded_write`) run as one transaction: on PostgreSQL on a connection of
that pool; on SQLite on a writer connection of their own in one thread of their own (a write may
wait for another process's lock, which must never block the event loop), one hop per create.

Statements are written once with `:name` parameters (`Statement`), which sqlite3 takes as they
are and which become `$1, $2…` for asyncpg. Timestamps come back as the driver has them (aware
datetimes from asyncpg, ISO text from SQLite): `utc` reads either; `timestamp` writes one as
SQLAlchemy would, so both write paths' values compare and sort alike.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from sora2.api.db.engine import SQLITE_BUSY_TIMEOUT_MS, SQLITE_CONNECT_ARGS

# What the asyncpg pool of the hot routes and the rate limiter may open per process, beside
# SQLAlchemy's pool (10 + 10).
POSTGRES_HOT_CONNECTIONS = 8

# How SQLAlchemy's SQLite dialect writes a DATETIME (naive UTC, always six digits of microseconds).
SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"

_PARAMETER = re.compile(r"(?<!:):([a-z_]+)")


class Statement:
    """One SQL statement with `:name` parameters, in each driver's own form."""

    __slots__ = ("names", "numbered", "sql")

    def __init__(self, sql: str) -> None:
        self.sql = " ".join(sql.split())
        self.names: tuple[str, ...] = tuple(dict.fromkeys(_PARAMETER.findall(self.sql)))
        position = {name: f"${index}" for index, name in enumerate(self.names, start=1)}
        self.numbered = _PARAMETER.sub(lambda match: position[match.group(1)], self.sql)

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)


Row = Sequence[Any]
Step = tuple[Statement, Mapping[str, Any]]
# What follows a guard, made from the row it returned (a balance, say).
Then = Callable[[Row], Sequence[Step]]


class Rows(Protocol):
    async def one(self, statement: Statement, params: Mapping[str, Any]) -> Row | None:
        """The first row the statement returns, or None."""

    async def all(self, statement: Statement, params: Mapping[str, Any]) -> list[Row]:
        """Every row the statement returns."""

    async def guarded_write(self, guard: Step, then: Then) -> Row | None:
        """In one transaction: `guard`, a statement with RETURNING; if it returns no row,
        nothing is written and the answer is None; else the statements `then(row)` makes,
        committed with it, and the answer is the guard's row. A statement that fails (a unique
        key taken meanwhile) rolls all of it back and raises."""

    def timestamp(self, value: datetime) -> Any:
        """An aware datetime as this database's timestamp columns keep it."""

    async def close(self) -> None:
        """Closes the driver's connections."""


def taken(error: Exception) -> bool:
    """A unique key that another transaction holds (its insert committed first)."""
    if isinstance(error, sqlite3.IntegrityError):
        return "UNIQUE" in str(error)
    return isinstance(error, asyncpg.exceptions.UniqueViolationError)


def utc(value: datetime | str | None) -> datetime | None:
    """A timestamp column as an aware UTC datetime (SQLite keeps naive UTC text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SqliteRows:
    """Reads on one read-only sqlite3 connection, on the calling (event loop's) thread."""

    def __init__(self, path: str, *, counted: Callable[[], None]) -> None:
        self._path = path
        self._counted = counted
        self._connection: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sora2-sqlite-writes")

    def _connect(self) -> sqlite3.Connection:
        # Opened at first use: the schema is migrated at start, after this object is built.
        connection: sqlite3.Connection = sqlite3.connect(
            f"file:{self._path}?mode=ro",
            uri=True,
            isolation_level=None,  # autocommit: each read sees what was committed before it
            check_same_thread=False,  # built on one thread, used on the loop's
            cached_statements=64,
            **SQLITE_CONNECT_ARGS,
        )
        connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA query_only=ON")
        self._connection = connection
        return connection

    async def one(self, statement: Statement, params: Mapping[str, Any]) -> Row | None:
        self._counted()
        connection = self._connection or self._connect()
        row: Row | None = connection.execute(statement.sql, params).fetchone()
        return row

    async def all(self, statement: Statement, params: Mapping[str, Any]) -> list[Row]:
        self._counted()
        connection = self._connection or self._connect()
        return connection.execute(statement.sql, params).fetchall()

    async def guarded_write(self, guard: Step, then: Then) -> Row | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writes, self._write, guard, then)

    def _write(self, guard: Step, then: Then) -> Row | None:
        connection = self._writer or self._connect_writer()
        connection.execute("BEGIN IMMEDIATE")  # the write lock first, as engine.py's writer
        try:
            self._counted()
            row: Row | None = connection.execute(guard[0].sql, guard[1]).fetchone()
            if row is not None:
                for statement, params in then(row):
                    self._counted()
                    connection.execute(statement.sql, params)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT" if row is not None else "ROLLBACK")
        return row

    def _connect_writer(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, **SQLITE_CONNECT_ARGS
        )
        for pragma in (
            f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "PRAGMA foreign_keys=ON",
            "PRAGMA synchronous=NORMAL",
        ):
            connection.execute(pragma)
        self._writer = connection
        return connection

    def timestamp(self, value: datetime) -> str:
        return value.astimezone(UTC).strftime(SQLITE_TIMESTAMP)

    async def close(self) -> None:
        for connection in (self._connection, self._writer):
            if connection is not None:
                connection.close()
        self._connection = self._writer = None
        self._writes.shutdown(wait=False)


class PostgresRows:
    """Statements through an asyncpg pool of their own (`POSTGRES_HOT_CONNECTIONS`)."""

    def __init__(self, dsn: str, *, counted: Callable[[], None]) -> None:
        self._dsn = dsn
        self._counted = counted
        self._pool: Any = None

    async def _connected(self) -> Any:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POSTGRES_HOT_CONNECTIONS,
                # Plain statements and whole transactions leave no session state behind: nothing
                # to reset on release (asyncpg's default costs a round trip).
                reset=_nothing_to_reset,
                server_settings={"application_name": "sora2-api-hot-reads"},
            )
        return self._pool

    async def one(self, statement: Statement, params: Mapping[str, Any]) -> Row | None:
        self._counted()
        pool = self._pool or await self._connected()
        row: Row | None = await pool.fetchrow(statement.numbered, *statement.arguments(params))
        return row

    async def all(self, statement: Statement, params: Mapping[str, Any]) -> list[Row]:
        self._counted()
        pool = self._pool or await self._connected()
        rows: list[Row] = await pool.fetch(statement.numbered, *statement.arguments(params))
        return rows

    async def guarded_write(self, guard: Step, then: Then) -> Row | None:
        pool = self._pool or await self._connected()
        async with pool.acquire() as connection, connection.transaction():
            statement, params = guard
            self._counted()
            row: Row | None = await connection.fetchrow(
                statement.numbered, *statement.arguments(params)
            )
            if row is None:
                return None
            for statement, params in then(row):
                self._counted()
                await connection.execute(statement.numbered, *statement.arguments(params))
        return row

    def timestamp(self, value: datetime) -> datetime:
        return value

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _nothing_to_reset(_connection: Any) -> None:
    return None


def rows_for(url: str, *, counted: Callable[[], None]) -> Rows | None:
    """The driver-level reader for the database at `url` (a SQLAlchemy URL); None for an
    in-memory SQLite database, which no second connection can see."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return None
        return SqliteRows(parsed.database, counted=counted)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return PostgresRows(dsn, counted=counted)
