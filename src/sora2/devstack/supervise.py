"""Keeps one service running: start it, restart it after a crash, reload it on a code change.

A crash is restarted after a growing pause (backoff), with the service's last lines shown; too many
crashes in a short window end the stack with an explanation instead of restarting forever. A code
change restarts the service at once; if the new code does not start, the service waits for the
next change rather than counting crashes, since the fix is in the editor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sora2.devstack.console import Console
from sora2.devstack.process import ServiceProcess, describe_exit
from sora2.devstack.readiness import wait_until_ready
from sora2.devstack.restart_signal import RestartSignal

SHOWN_TAIL_LINES = 12
# A reload waits less for the old process than a real stop does: an open event stream (a page
# following a video's progress) would otherwise hold every save up for the full grace period.
RELOAD_GRACE = 3.0


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """How to run one service and how to tell that it is up."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    port: int
    health_url: str


class ServiceFailure(Exception):
    """A service could not be brought (or kept) up; the message says why, `tail` what it printed."""

    def __init__(self, message: str, tail: Sequence[str]) -> None:
        super().__init__(message)
        self.tail = list(tail)

    def explain(self, log_path: object) -> str:
        lines = [str(self)]
        if self.tail:
            lines.append("its last lines:")
            lines.extend(f"  {line}" for line in self.tail[-SHOWN_TAIL_LINES:])
        else:
            lines.append("it printed nothing.")
        lines.append(f"full output: {log_path}")
        return "\n".join(lines)


class CrashLoop(ServiceFailure):
    """Crashed too often in a short window: restarting again would only repeat it."""


@dataclasses.dataclass
class CrashPolicy:
    """Backoff doubling from `first_delay` to `max_delay`; give up at `max_crashes` in `window`."""

    max_crashes: int = 5
    window: float = 60.0
    first_delay: float = 0.25
    max_delay: float = 8.0
    _crashes: collections.deque[float] = dataclasses.field(default_factory=collections.deque)

    def record_crash(self, now: float) -> float | None:
        """The pause before the next restart, or None when the service should be given up."""
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.window:
            self._crashes.popleft()
        count = len(self._crashes)
        if count >= self.max_crashes:
            return None
        return float(min(self.max_delay, self.first_delay * 2 ** (count - 1)))

    @property
    def recent_crashes(self) -> int:
        return len(self._crashes)


class Supervisor:
    """Owns the current process of one service; `supervise()` runs until cancelled or looping."""

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        console: Console,
        start_timeout: float,
        grace: float,
        policy: CrashPolicy | None = None,
        on_started: Callable[[ServiceProcess], None] | None = None,
        restart_signal: RestartSignal | None = None,
    ) -> None:
        self.spec = spec
        self.console = console
        self.start_timeout = start_timeout
        self.grace = grace
        self.policy = policy or CrashPolicy()
        self.on_started = on_started
        # Raised while this service is restarted on purpose, so the web holds its requests.
        self.restart_signal = restart_signal
        self.process: ServiceProcess | None = None
        self._exited: asyncio.Future[int] | None = None
        self._reload = asyncio.Event()
        self._changes: list[str] = []
        self._down_until_change = False
        self._pending_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    async def start(self) -> float:
        """Spawns the service and waits for its health URL; seconds it took, or `ServiceFailure`."""
        began = time.monotonic()
        self.process = await self._spawn()
        exited = self._exited = asyncio.ensure_future(self.process.wait())
        if self.on_started is not None:
            self.on_started(self.process)
        probe = await wait_until_ready(
            self.spec.health_url, deadline=began + self.start_timeout, exited=exited
        )
        if probe.ready:
            return time.monotonic() - began
        if exited.done():
            reason = (
                f"{self.name} {describe_exit(exited.result())} before "
                f"{self.spec.health_url} answered"
            )
        else:
            reason = (
                f"{self.name} did not answer {self.spec.health_url} with 200 within "
                f"{self.start_timeout:g} s (last answer: {probe.describe()})"
            )
            await self.process.stop(grace=self.grace)
        raise ServiceFailure(reason, self.process.tail)

    def request_reload(self, changed: Sequence[str]) -> None:
        self._changes.extend(changed)
        self._reload.set()

    async def supervise(self) -> None:
        """Restarts after crashes and reloads on changes, until cancelled; raises `CrashLoop`."""
        while True:
            if self._exited is None or self._exited.done():
                if self._down_until_change:
                    await self._reload.wait()
                    await self._apply_reload()
                else:
                    await self._recover_from_crash()
                continue
            reload_requested = asyncio.ensure_future(self._reload.wait())
            waiting: set[asyncio.Future[Any]] = {self._exited, reload_requested}
            await asyncio.wait(waiting, return_when="FIRST_COMPLETED")
            reload_requested.cancel()
            if self._reload.is_set():
                await self._apply_reload()

    async def stop(self, *, grace: float | None = None) -> None:
        if self.process is not None:
            await self.process.stop(grace=self.grace if grace is None else grace)

    def kill_now(self) -> None:
        if self.process is not None:
            self.process.kill_now()

    async def _spawn(self) -> ServiceProcess:
        # Shielded so that a Ctrl-C arriving mid-spawn still leaves us the handle to stop it.
        spawning = asyncio.ensure_future(
            ServiceProcess.spawn(
                self.spec.argv,
                env=self.spec.env,
                sink=lambda line: self.console.line(self.name, line),
            )
        )
        try:
            return await asyncio.shield(spawning)
        except asyncio.CancelledError:
            self.process = await spawning
            raise

    async def _apply_reload(self) -> None:
        changed = ", ".join(sorted(set(self._changes))[:3]) or "files"
        self._changes.clear()
        self._reload.clear()
        self.console.say(f"{self.name}: code changed ({changed}), restarting", about=self.name)
        grace = min(self.grace, RELOAD_GRACE)
        self._announce_restart(grace + self.start_timeout)
        await self.stop(grace=grace)
        try:
            seconds = await self._start_then_clear()
        except ServiceFailure as failure:
            self._down_until_change = True
            self.console.say(failure.explain(self._log_path()), about=self.name)
            self.console.say(f"{self.name} stays down until the next code change", about=self.name)
            return
        self._down_until_change = False
        self.console.say(f"{self.name} reloaded, ready in {seconds:.2f} s", about=self.name)

    async def _recover_from_crash(self) -> None:
        assert self.process is not None
        assert self._exited is not None
        reason = self._pending_reason or f"{self.name} {describe_exit(self._exited.result())}"
        self._pending_reason = None
        delay = self.policy.record_crash(time.monotonic())
        failure = ServiceFailure(reason, self.process.tail)
        if delay is None:
            message = (
                f"{reason}: {self.policy.recent_crashes} crashes within "
                f"{self.policy.window:g} s, so it is not restarted again. Fix the cause shown "
                "below, then run sora2 dev again."
            )
            raise CrashLoop(message, self.process.tail)
        self.console.say(failure.explain(self._log_path()), about=self.name)
        self.console.say(
            f"restarting {self.name} in {delay:g} s (crash {self.policy.recent_crashes} of "
            f"{self.policy.max_crashes} allowed within {self.policy.window:g} s)",
            about=self.name,
        )
        self._announce_restart(delay + self.start_timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reload.wait(), timeout=delay)
        if self._reload.is_set():
            await self._apply_reload()
            return
        try:
            seconds = await self._start_then_clear()
        except ServiceFailure as failure:
            self._pending_reason = str(failure)
            return
        self.console.say(f"{self.name} is back, ready in {seconds:.2f} s", about=self.name)

    def _announce_restart(self, expected_seconds: float) -> None:
        if self.restart_signal is not None:
            self.restart_signal.announce(expected_seconds)

    async def _start_then_clear(self) -> float:
        """`start()`; whatever its outcome, the restart is over: up, or an outage to report."""
        try:
            return await self.start()
        finally:
            if self.restart_signal is not None:
                self.restart_signal.clear()

    def _log_path(self) -> object:
        return self.console.transcript_path(self.name)
