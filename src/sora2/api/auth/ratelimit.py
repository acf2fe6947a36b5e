"""Sliding-window rate limits (per IP, per account, per user) for sign-in, sign-up and generate.

On PostgreSQL the counters live in the database (`rate_limit_counters`), so every api process on
every machine enforces one limit: each attempt is one atomic upsert that returns the new count.
The window slides by weighting the previous fixed window's count by how much of it still
overlaps (the "sliding window counter"): within a few percent of an exact log, two rows per key.

On SQLite (one machine) the counters stay in the process's memory: SQLite has one writer, which a
request may hold while it is limited, so a second connection could only wait on it. Several api
processes on SQLite therefore each count alone; run PostgreSQL to share limits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Protocol

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sora2.api.db import Database
from sora2.api.db.base import Base
from sora2.api.db.rows import Rows, Statement
from sora2.api.errors import ApiError

SWEEP_EVERY = 1_000
KEY_MAX_LENGTH = 512


class RateLimiter(Protocol):
    async def check_and_record(self, key: str, limit: int, what: str) -> None:
        """Counts one attempt for `key`, or raises 429 when it is over `limit`."""

    async def enforce(self, key: str, limit: int, what: str) -> None:
        """Raises 429 when `key` has reached `limit`, without counting an attempt."""

    async def record(self, key: str) -> None:
        """Counts one attempt for `key` (e.g. a failed sign-in)."""


def too_many_requests(what: str, wait_seconds: float) -> ApiError:
    seconds = max(1, math.ceil(wait_seconds))
    return ApiError(
        429,
        "Too Many Requests",
        f"Too many {what}. Wait {seconds} s before trying again.",
        details={"retryAfterSeconds": seconds},
        headers={"Retry-After": str(seconds)},
    )


class MemoryRateLimiter:
    """Exact sliding windows in this process's memory (SQLite deployments)."""

    def __init__(self, *, window_seconds: float) -> None:
        self.window = window_seconds
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def _retry_after(self, key: str, limit: int) -> float | None:
        now = time.monotonic()
        hits = self._recent(key, now)
        if len(hits) < limit:
            return None
        return max(0.0, hits[0] + self.window - now)

    async def record(self, key: str) -> None:
        now = time.monotonic()
        self._recent(key, now).append(now)
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            self._sweep(now)

    async def check_and_record(self, key: str, limit: int, what: str) -> None:
        await self.enforce(key, limit, what)
        await self.record(key)

    async def enforce(self, key: str, limit: int, what: str) -> None:
        wait = self._retry_after(key, limit)
        if wait is not None:
            raise too_many_requests(what, wait)

    def _sweep(self, now: float) -> None:
        for key in [
            k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window
        ]:
            del self._hits[key]


class RateLimitCounter(Base):
    """Attempts for one key in one fixed window (`window_start`, Unix seconds)."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)


# One more attempt in the current window, and both windows' counts, in one round trip.
_COUNT_ONE_MORE = Statement(
    "WITH counted AS (INSERT INTO rate_limit_counters (key, window_start, hits) "
    "VALUES (:key, :start, 1) ON CONFLICT (key, window_start) "
    "DO UPDATE SET hits = rate_limit_counters.hits + 1 RETURNING hits) "
    "SELECT (SELECT hits FROM rate_limit_counters WHERE key = :key AND window_start = :previous), "
    "(SELECT hits FROM counted)"
)
_COUNTS = Statement(
    "SELECT (SELECT hits FROM rate_limit_counters WHERE key = :key AND window_start = :previous), "
    "(SELECT hits FROM rate_limit_counters WHERE key = :key AND window_start = :start)"
)
_SWEEP = Statement("DELETE FROM rate_limit_counters WHERE window_start < :previous")


class DatabaseRateLimiter:
    """Limits shared by every api process through PostgreSQL.

    Counted on the driver's own pool (`Rows`), never on the request's: a request that holds a
    connection of SQLAlchemy's pool (a create has read the caller's account by then) must not
    wait for a second one from the same pool, or twenty such requests at once hold every
    connection and each waits for a twenty-first until the pool's timeout (30 s, then 500s).
    """

    def __init__(self, rows: Rows, *, window_seconds: int) -> None:
        self.rows = rows
        self.window = window_seconds
        self._calls = 0

    def _windows(self, now: float) -> tuple[int, float]:
        """The current window's start, and the fraction of it already elapsed."""
        start = int(now // self.window) * self.window
        return start, (now - start) / self.window

    async def _count(self, key: str, *, add: bool) -> tuple[int, int, float]:
        """(previous window's hits, current window's hits, elapsed fraction), adding one first
        when `add`: one statement, the upsert atomic whatever other processes do meanwhile."""
        key = key[:KEY_MAX_LENGTH]
        start, elapsed = self._windows(time.time())
        params = {"key": key, "start": start, "previous": start - self.window}
        row = await self.rows.one(_COUNT_ONE_MORE if add else _COUNTS, params)
        previous, current = row if row is not None else (None, None)
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            await self.rows.one(_SWEEP, {"previous": start - self.window})
        return previous or 0, current or 0, elapsed

    def _retry_after(self, previous: int, current: int, elapsed: float, limit: int) -> float:
        """Seconds until the weighted count falls below `limit` again."""
        if current < limit and previous:
            # previous * (1 - t) + current < limit, for t within this window
            until = 1 - (limit - current) / previous
            return max(0.0, (until - elapsed) * self.window)
        # Only once this window is the previous one, weighted down far enough.
        return ((1 - elapsed) + max(0.0, 1 - limit / max(current, 1))) * self.window

    async def _decide(self, key: str, limit: int, what: str, *, add: bool) -> None:
        previous, current, elapsed = await self._count(key, add=add)
        # Counted with this attempt (add) it may reach the limit; without, it must stay under.
        weighted = previous * (1 - elapsed) + current
        over = weighted > limit if add else weighted >= limit
        if over:
            raise too_many_requests(what, self._retry_after(previous, current, elapsed, limit))

    async def check_and_record(self, key: str, limit: int, what: str) -> None:
        await self._decide(key, limit, what, add=True)

    async def enforce(self, key: str, limit: int, what: str) -> None:
        await self._decide(key, limit, what, add=False)

    async def record(self, key: str) -> None:
        await self._count(key, add=True)


def rate_limiter(database: Database, rows: Rows | None, *, window_seconds: int) -> RateLimiter:
    """Shared through the database on PostgreSQL; per process on SQLite (see the module doc)."""
    if database.is_sqlite or rows is None:
        return MemoryRateLimiter(window_seconds=window_seconds)
    return DatabaseRateLimiter(rows, window_seconds=window_seconds)
