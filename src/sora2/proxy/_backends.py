"""Several backends behind one proxy: each with its own health, breaker and count of requests in
flight; which one a request goes to; and passive outlier detection (a backend that keeps failing
is ejected until its health check passes again).

With one backend this is bookkeeping only: it is always the one chosen and never ejected.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Collection

from sora2.proxy._circuit import CircuitBreaker, CircuitState
from sora2.proxy._config import BalancePolicy, BreakerPolicy, ProxyConfig
from sora2.proxy._deadline import Deadline
from sora2.proxy._errors import Failure, ProxyError
from sora2.proxy._health import Health, HealthMonitor

logger = logging.getLogger("sora2.proxy.backends")

_OUTSTANDING = operator.attrgetter("outstanding")
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
        self.waiting: set[Deadline] = set()
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
            waiting.move_to(now)  # requests stuck on it move to another backend now

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


Tried = list[tuple[Backend, str]]
"""Backends a request tried or passed over, each with what happened there (`ECONNREFUSED`,
`503`, `HEALTH_CHECK_FAILED`...)."""


class Backends:
    """Every backend of one proxy, and the choice of one for a request."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        on_circuit_change: Callable[[Backend, CircuitState], None],
        restart_window: Callable[[], float],
    ) -> None:
        self.all = [
            Backend(
                url,
                index=index,
                upstream_prefix=config.upstream_prefix,
                breaker=config.breaker,
                balance=config.balance,
                on_circuit_change=on_circuit_change,
            )
            for index, url in enumerate(config.backend_urls)
        ]
        self.several = len(self.all) > 1
        self._order = _Balancer(self.all, config.balance).order
        self._restart_window = restart_window
        self._expose_internals = config.expose_internals

    def in_rotation(self) -> int:
        return sum(1 for backend in self.all if not backend.ejected)

    def may_eject(self) -> bool:
        """Ejection never takes the last backend out of rotation (nor the only one)."""
        return self.several and self.in_rotation() > 1

    def refusal(self, backend: Backend, *, strict: bool, now: float) -> ProxyError | None:
        """Why `backend` may not take a request now, or None (in half-open, it then has this
        request as its probe). `strict`: a backend down since it started counts as down too
        (with several backends, the others are tried first)."""
        health = backend.health
        if (
            health.verdict is Health.DOWN
            and (strict or health.ever_up)
            and self._restart_window() <= 0
        ):
            return ProxyError(
                Failure.UNAVAILABLE, "HEALTH_CHECK_FAILED", health.last_error, retry_after=1
            )
        if backend.ejected and not backend.try_return(now):
            wait = backend.ejected_until - now
            return ProxyError(Failure.UNAVAILABLE, "EJECTED", retry_after=max(wait, 1.0))
        circuit = backend.circuit
        if circuit.state is CircuitState.CLOSED or circuit.allow():
            return None
        return ProxyError(Failure.UNAVAILABLE, "CIRCUIT_OPEN", retry_after=circuit.retry_after())

    def pick(
        self, *, exclude: Collection[Backend], passed_over: Tried, now: float
    ) -> Backend | None:
        """The best backend not in `exclude` that may take a request: one known up first,
        else one still starting; None when none may. Those refused go into `passed_over`."""
        for strict in (True, False):
            for backend in self._order(exclude):
                refusal = self.refusal(backend, strict=strict, now=now)
                if refusal is None:
                    return backend
                if strict:
                    passed_over.append((backend, refusal.error_code))
        return None

    def another_could_take(self, tried: Tried, current: Backend) -> bool:
        """Whether a backend other than those tried looks able to take the request (so that a
        hung attempt is worth cutting short: the request could go there)."""
        for backend in self.all:
            if (
                backend is not current
                and not backend.ejected
                and backend.circuit.state is not CircuitState.OPEN
                and backend.health.verdict is not Health.DOWN
                and all(backend is not other for other, _ in tried)
            ):
                return True
        return False

    @staticmethod
    def none_available(passed_over: Tried) -> ProxyError:
        waits = [backend.circuit.retry_after() for backend, _ in passed_over]
        return ProxyError(
            Failure.UNAVAILABLE,
            "NO_BACKEND_AVAILABLE",
            "every backend is down, ejected or has its circuit open",
            retry_after=max(1.0, min(waits, default=1.0)),
        )

    def details(self, tried: Tried) -> list[dict[str, str]]:
        """`details.backends` of an error: each backend tried or passed over, named by its
        address where internals may be shown, else by its place in the list (api1, api2...)."""
        expose = self._expose_internals
        return [
            {"backend": backend.url if expose else backend.name, "outcome": outcome}
            for backend, outcome in tried
        ]


class _Balancer:
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
        rotated = backends[start:] + backends[:start]
        if exclude:
            rotated = [backend for backend in rotated if backend not in exclude]
        if self._least_outstanding:
            rotated.sort(key=_OUTSTANDING)  # stable: ties keep their turn
        return rotated
