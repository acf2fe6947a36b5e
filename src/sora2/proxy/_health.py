"""What the proxy believes about the backend's health, learned off the request path.

Active checks of `/api/health` run in the background; proxied traffic also counts (a response is
proof of life), so a busy backend is not polled at all. Nothing here is awaited by a request that
succeeds: requests only read the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable

import aiohttp

logger = logging.getLogger("sora2.proxy.health")

# While the backend is down (or not yet seen), check this often: recovery is noticed within it.
FAST_INTERVAL = 0.25
# However much failing traffic asks for a check, active checks are at least this far apart.
MIN_CHECK_GAP = 0.05
# A refused connection is proof enough; a slow or failing answer must repeat before the backend
# is declared down, so one slow health check under load does not turn traffic away.
FAILURES_BEFORE_DOWN = 2


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class HealthMonitor:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: str,
        ttl: float,
        timeout: float,
        on_recovered: Callable[[], None],
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self._session = session
        self._url = url
        self._ttl = ttl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_recovered = on_recovered
        self._on_down = on_down
        self._loop = asyncio.get_running_loop()
        self._verdict = Health.UNKNOWN
        self._checked_at = -float("inf")
        self._probed_at = -float("inf")
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self.ever_up = False
        self.last_error = ""
        self.passed_at = -float("inf")
        """When an active check last passed (loop time)."""
        self._failed_checks = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def verdict(self) -> Health:
        """The latest verdict while it is trusted (younger than the TTL), else UNKNOWN."""
        if self._loop.time() - self._checked_at > self._ttl:
            return Health.UNKNOWN
        return self._verdict

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="sora2-proxy-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def note_response(self) -> None:
        """Traffic got an answer from the backend: as good as a passing check."""
        self._checked_at = self._loop.time()
        if self._verdict is not Health.UP:
            self._mark(Health.UP)

    def note_failure(self) -> None:
        """Traffic failed to reach the backend: check now instead of at the next interval."""
        self._wake.set()

    def note_refused(self) -> None:
        """Traffic met a refused connection: nobody listens, as good as a failed check (and a
        request waiting for the backend must not take a stale "up" for an answer)."""
        self.last_error = "connection refused"
        self._checked_at = self._loop.time()
        if self._verdict is not Health.DOWN:
            self._mark(Health.DOWN)
        self._wake.set()

    async def wait_until_up(self, timeout: float) -> bool:
        """True once the backend answers a check, False after `timeout`. While someone waits,
        checks run every MIN_CHECK_GAP rather than every FAST_INTERVAL: a restarting backend
        is noticed within 50 ms of answering."""
        if self._up.is_set():
            return True
        until = self._loop.time() + timeout
        while True:
            self._wake.set()
            remaining = until - self._loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(min(remaining, MIN_CHECK_GAP)):
                    await self._up.wait()
            except TimeoutError:
                continue
            return True

    async def check(self) -> Health:
        self._probed_at = self._loop.time()
        refused = False
        try:
            async with self._session.get(
                self._url, timeout=self._timeout, allow_redirects=False
            ) as response:
                await response.read()
                healthy = response.status < 500
                self.last_error = "" if healthy else f"health check answered {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            healthy = False
            refused = isinstance(error, aiohttp.ClientConnectorError) and isinstance(
                error.os_error, ConnectionRefusedError
            )
            self.last_error = "connection refused" if refused else type(error).__name__
        self._checked_at = self._loop.time()
        self._failed_checks = 0 if healthy else self._failed_checks + 1
        if healthy:
            self.passed_at = self._checked_at
            self._mark(Health.UP)
        elif refused or self._failed_checks >= FAILURES_BEFORE_DOWN:
            self._mark(Health.DOWN)
        return self._verdict

    def _mark(self, verdict: Health) -> None:
        previous, self._verdict = self._verdict, verdict
        if verdict is Health.UP:
            self._up.set()
            self.ever_up = True
            if previous is Health.DOWN:
                logger.info("backend %s is healthy again", self._url)
                self._on_recovered()
        else:
            self._up.clear()
            if previous is not Health.DOWN:
                logger.warning("backend %s is unhealthy: %s", self._url, self.last_error or "-")
                if self._on_down is not None:
                    self._on_down()

    def _interval(self) -> float:
        # A failed check while up is confirmed (or not) soon, not a whole interval later: a
        # hung backend is known down within about two check timeouts.
        if self._verdict is Health.UP and not self._failed_checks:
            return self._ttl / 2
        return FAST_INTERVAL

    async def _run(self) -> None:
        while True:
            if self._wake.is_set():
                due = self._probed_at + MIN_CHECK_GAP - self._loop.time()
            else:
                due = self._checked_at + self._interval() - self._loop.time()
            if due <= 0:
                self._wake.clear()
                await self.check()
                continue
            if self._wake.is_set():
                await asyncio.sleep(due)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due):
                    await self._wake.wait()
