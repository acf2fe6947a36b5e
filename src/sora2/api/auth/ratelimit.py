"""In-process sliding-window rate limits (per IP, per account) for sign-in and sign-up.

Counters live in this process's memory: with several api processes each enforces its own limit,
which still bounds guessing to a known multiple. Keys expire with their window, so memory stays
bounded by the number of distinct callers in one window.
"""

from __future__ import annotations

import math
import time
from collections import deque

from sora2.api.errors import ApiError

SWEEP_EVERY = 1_000


class RateLimiter:
    def __init__(self, *, window_seconds: float) -> None:
        self.window = window_seconds
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def retry_after(self, key: str, limit: int) -> float | None:
        """Seconds until `key` may try again, or None when it is under `limit`."""
        now = time.monotonic()
        hits = self._recent(key, now)
        if len(hits) < limit:
            return None
        return max(0.0, hits[0] + self.window - now)

    def record(self, key: str) -> None:
        now = time.monotonic()
        self._recent(key, now).append(now)
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            self._sweep(now)

    def check_and_record(self, key: str, limit: int, what: str) -> None:
        """Counts one attempt for `key`, or raises 429 when it is over `limit`."""
        self.enforce(key, limit, what)
        self.record(key)

    def enforce(self, key: str, limit: int, what: str) -> None:
        wait = self.retry_after(key, limit)
        if wait is not None:
            raise too_many_requests(what, wait)

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key in [
            k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window
        ]:
            del self._hits[key]


def too_many_requests(what: str, wait_seconds: float) -> ApiError:
    seconds = max(1, math.ceil(wait_seconds))
    return ApiError(
        429,
        "Too Many Requests",
        f"Too many {what}. Wait {seconds} s before trying again.",
        details={"retryAfterSeconds": seconds},
        headers={"Retry-After": str(seconds)},
    )
