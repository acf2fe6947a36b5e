"""A circuit breaker: consecutive upstream failures make requests fail fast for a while."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Closed → (threshold consecutive failures) → open → (after `open_time`) half-open, where one
    probe request at a time is let through: its success closes the circuit, its failure reopens it.

    A probe that has not told anything within `probe_timeout` (a slow endpoint, say) no longer
    holds the others back: the next request becomes a probe too.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        open_time: float,
        probe_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_time = open_time
        self.probe_timeout = probe_timeout
        self._clock = clock
        self._on_change = on_change
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False
        self._probe_started = 0.0

    def allow(self) -> bool:
        """Whether a request may go upstream now; in half-open, True claims the single probe."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() - self.opened_at < self.open_time:
                return False
            self._set(CircuitState.HALF_OPEN)
        now = self._clock()
        if self._probe_in_flight and now - self._probe_started < self.probe_timeout:
            return False
        self._probe_in_flight = True
        self._probe_started = now
        return True

    def retry_after(self) -> float:
        """Seconds until the next probe may be let through."""
        if self.state is CircuitState.OPEN:
            return max(0.0, self.open_time - (self._clock() - self.opened_at))
        return 0.0

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._probe_in_flight = False
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self._probe_in_flight = False
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED
            and self.consecutive_failures >= self.failure_threshold
        ):
            self.opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release_probe(self) -> None:
        """A probe that ended without telling anything about the backend (client went away)."""
        self._probe_in_flight = False

    def reset(self) -> None:
        """The backend is known healthy again (an active health check said so)."""
        self.record_success()

    def _set(self, state: CircuitState) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
