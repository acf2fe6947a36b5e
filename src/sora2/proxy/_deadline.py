"""A request's deadline: one timer per request that cancels its task when time is up.

`asyncio.timeout()` does the same job with more machinery per use; the proxy needs one per
request on its hottest path. Our own cancellation is told apart from anyone else's (a client
that went away) by `expired`.
"""

from __future__ import annotations

import asyncio


class Deadline:
    __slots__ = ("_handle", "_loop", "_task", "expired", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task(loop)
        assert task is not None, "a Deadline belongs to a running task"
        self._task = task
        self._loop = loop
        self.expired = False
        self.when = when
        self._handle = loop.call_at(when, self._expire)

    def move_to(self, when: float) -> None:
        """Expire at `when` instead (sooner or later). Does nothing once expired or disarmed:
        a body still being sent may report progress after the answer arrived."""
        if self.expired or self._handle.cancelled():
            return
        self._handle.cancel()
        self.when = when
        self._handle = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def absorb(self) -> None:
        """Turn our own cancellation back into a normal return path for the task."""
        self._task.uncancel()

    def disarm(self) -> None:
        self._handle.cancel()
