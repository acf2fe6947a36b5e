"""An in-process wake-up for `/events` streams when this process changes a video.

Streams still poll the database at a modest interval (another process may run the worker); this
only lets them answer at once when the change happened here (the embedded worker, a cancel).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class VideoEvents:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, video_id: str) -> None:
        for event in self._waiters.get(video_id, ()):
            event.set()

    async def wait(self, video_id: str, timeout: float) -> None:
        """Returns when `video_id` changes here, or after `timeout` seconds."""
        event = asyncio.Event()
        self._waiters[video_id].add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(video_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[video_id]
