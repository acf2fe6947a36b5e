"""Several backends behind one proxy: each with its own health, breaker and count of requests in
flight; which one a request goes to; and passive outlier detection (a backend that keeps failing
is ejected until its health check passes again).

With one backend this is bookkeeping only: it is always the one chosen and never ejected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from sora2.proxy._circuit import CircuitBreaker, CircuitState
from sora2.proxy._config import BalancePolicy, BreakerPolicy
from sora2.proxy._health import Health, HealthMonitor

logger = logging.getLogger("sora2.proxy.backends")

OUTCOMES = ("response", "refused", "connect_error", "reset", "timeout", "invalid_response")


class Backend:
    """One backend: its address, what the proxy believes of it, and its own figures."""

    def __init__(
        self,
        url: str,
        *,
        index: int,
        upstream_prefix: str,
        breaker: BreakerPolicy,
        balance: BalancePolicy,
        on_circuit_change: Callable[[Backend, CircuitState], None],
    ) -> None:
        self.url = url
        self.name = f"api{index + 1}"
        """How errors name it when they may not show its address."""
        self.upstream_base = url + upstream_prefix
        self.circuit = CircuitBreaker(
            failure_threshold=breaker.failure_threshold,
            open_time=breaker.open_time,
            probe_timeout=breaker.probe_timeout,
            on_change=lambda state: on_circuit_change(self, state),
        )
        self._balance = balance
        self._health: HealthMonitor | None = None
        self.outstanding = 0
        """Requests using it now (an open stream included)."""
        self.consecutive_failures = 0
        self.ejected = False
        self.ejected_until = 0.0
        self.ejections_in_row = 0
        self.ejections = 0
        self.attempts = dict.fromkeys(OUTCOMES, 0)
        self.waiting: set[asyncio.Timeout] = set()
        """The try timeouts of attempts waiting for its response headers that could go to
        another backend: ejecting it ends them at once, and they move."""

    @property
    def health(self) -> HealthMonitor:
        assert self._health is not None, "Proxy.start() was not awaited"
        return self._health

    def attach(self, health: HealthMonitor) -> None:
        self._health = health
        health.start()

    async def close(self) -> None:
        if self._health is not None:
            await self._health.stop()

    def check_soon(self) -> None:
        """Ask for a health check now rather than at the next interval (once started)."""
        if self._health is not None:
            self._health.note_failure()

    # -- outlier detection -----------------------------------------------------------------

    def note_outcome(self, *, failed: bool, now: float, may_eject: bool) -> None:
        """One attempt's verdict: a failure (unreachable, reset, silent, 502/503/504) or an
        answer. `eject_after` failures in a row eject it, when `may_eject` allows."""
        if not failed:
            self.consecutive_failures = 0
            if not self.ejected:
                self.ejections_in_row = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self._balance.eject_after and may_eject:
            self.eject(now, f"{self.consecutive_failures} failures in a row")

    def eject(self, now: float, why: str) -> None:
        """Out of rotation for at least the ejection time, then until a health check passes."""
        if self.ejected:
            return
        self.ejections_in_row += 1
        self.ejections += 1
        time = min(
            self._balance.eject_time * 2 ** (self.ejections_in_row - 1),
            self._balance.max_eject_time,
        )
        self.ejected = True
        self.ejected_until = now + time
        logger.warning("backend %s ejected for %.1fs at least: %s", self.url, time, why)
        self.check_soon()  # a fresh check decides when it returns
        for waiting in self.waiting:
            waiting.reschedule(now)  # requests stuck on it move to another backend now

    def try_return(self, now: float) -> bool:
        """Whether an ejected backend is back: its ejection time is over and a health check
        passed since. Asks for a check when one is due."""
        if not self.ejected:
            return True
        if now < self.ejected_until:
            return False
        health = self.health
        if health.passed_at >= self.ejected_until and health.verdict is Health.UP:
            self.ejected = False
            self.consecutive_failures = 0
            logger.info("backend %s is back in rotation", self.url)
            return True
        health.note_failure()  # check now rather than at the next interval
        return False


class Balancer:
    """Orders the backends for a request: least requests in flight first (round-robin among
    equals), or each in turn."""

    def __init__(self, backends: list[Backend], policy: BalancePolicy) -> None:
        self.backends = backends
        self._least_outstanding = policy.strategy == "least_outstanding"
        self._next = 0

    def order(self, exclude: Collection[Backend] = ()) -> list[Backend]:
        backends = self.backends
        count = len(backends)
        start = self._next
        self._next = (start + 1) % count
        rotated = [backends[(start + i) % count] for i in range(count)]
        if exclude:
            rotated = [backend for backend in rotated if backend not in exclude]
        if self._least_outstanding:
            rotated.sort(key=lambda backend: backend.outstanding)  # stable: ties keep the turn
        return rotated

    def in_rotation(self) -> int:
        return sum(1 for backend in self.backends if not backend.ejected)
