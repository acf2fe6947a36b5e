"""One service process: its own process group, its output pumped line by line, a clean stop.

Its own group (a new session) means a Ctrl-C in the terminal reaches only the launcher, which
then stops the services in order, and that a stop reaches everything the service started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence

TAIL_LINES = 20
_READ_CHUNK = 64 * 1024
_PR_SET_PDEATHSIG = 1

LineSink = Callable[[str], None]


def _load_prctl() -> Callable[..., int] | None:
    # The interpreter's own symbols include libc's: `find_library("c")` would run
    # `ldconfig -p` in a subprocess on every launcher start instead.
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def _die_with_launcher() -> None:
    """Runs in the child before exec: if the launcher is killed outright, the child gets SIGTERM."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class ServiceProcess:
    """A running child: its PID (= its process group), its last lines, its exit."""

    def __init__(self, process: asyncio.subprocess.Process, sink: LineSink) -> None:
        self._process = process
        self._sink = sink
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pump = asyncio.create_task(self._pump_output())

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], *, env: Mapping[str, str], sink: LineSink
    ) -> ServiceProcess:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_launcher,
        )
        return cls(process, sink)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        """The exit status, once the last lines are in (briefly: a grandchild may hold the pipe)."""
        code = await self._process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), timeout=1.0)
        return code

    async def stop(self, *, grace: float) -> int:
        """SIGTERM to the group, up to `grace` seconds, then SIGKILL to whatever is left of it."""
        if self._process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), timeout=grace)
            except TimeoutError:
                self._signal_group(signal.SIGKILL)
        # The leader is gone; anything it started in its group must not outlive it.
        self._signal_group(signal.SIGKILL)
        code = await self.wait()
        self._pump.cancel()
        return code

    def kill_now(self) -> None:
        """SIGKILL to the whole group, for a second Ctrl-C."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    async def _pump_output(self) -> None:
        stream = self._process.stdout
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(_READ_CHUNK):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._deliver(raw)
            if len(pending) >= _READ_CHUNK:  # one very long line: pass it on in pieces
                self._deliver(pending)
                pending = b""
        if pending:
            self._deliver(pending)

    def _deliver(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self.tail.append(line)
        self._sink(line)
