"""When a retry is safe, how long to wait before it, and how many may run at once."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUSES = frozenset({502, 503, 504})


def is_idempotent(method: str, has_idempotency_key: bool) -> bool:
    """Safe to send twice: the method says so (RFC 9110 §9.2.2) or the caller gave a key."""
    return method in IDEMPOTENT_METHODS or has_idempotency_key


def backoff_delay(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, base · 2^(attempt-1)]."""
    return random.uniform(0.0, base * (2 ** (attempt - 1)))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait per a `Retry-After` value (delta-seconds or HTTP-date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        # isdigit() is also true of '²' and other Unicode digits float() refuses.
        return float(value) if value.isascii() else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RetryBudget:
    """Retries in progress may not exceed `ratio` of requests in flight (at least `minimum`).

    Like Envoy's retry budget: under an outage every request fails, and without a budget each
    would be sent `max_attempts` times, multiplying the load on a backend trying to recover.
    """

    __slots__ = ("in_flight", "minimum", "ratio", "retrying")

    def __init__(self, *, ratio: float, minimum: int) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.in_flight = 0
        self.retrying = 0

    def try_acquire(self) -> bool:
        if self.retrying >= max(self.minimum, int(self.in_flight * self.ratio)):
            return False
        self.retrying += 1
        return True

    def release(self) -> None:
        self.retrying -= 1
