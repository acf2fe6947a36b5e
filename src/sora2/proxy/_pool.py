"""How many upstream connections requests may hold at once, and the queue for the rest.

aiohttp's connector has its own limit, but a request waiting there for a free connection is
inside aiohttp's `connect` step: that wait cannot be told apart from a backend that does not
answer, so it would be retried and counted against the backend. The proxy keeps the count here
instead (the connector itself is unbounded): waiting for a slot is the proxy's own congestion,
never the backend's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class ConnectionSlots:
    """At most `limit` requests hold an upstream connection; the rest wait their turn (FIFO)."""

    __slots__ = ("_loop", "_waiters", "busy", "limit")

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self.busy = 0
        self._loop = loop
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def take(self) -> None:
        """Hold a slot; waits while all are held. Cancelling the wait takes nothing."""
        if self.busy < self.limit and not self._waiters:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a slot in the same instant we were cancelled
            else:
                with contextlib.suppress(ValueError):  # a release may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """Release a slot, handing it straight to the longest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: `busy` is unchanged
                return
        self.busy -= 1
