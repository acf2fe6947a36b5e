"""Changes to videos made in this process, told at once to whoever listens.

The worker (embedded or not) and the routes that cancel or delete call `notify` after their
change is committed. The live-progress poller (`sora2.api.live`) listens: a change here wakes the
watchers of that video without waiting for the next poll. Changes made by other processes reach
it through PostgreSQL's NOTIFY, or through the poll itself on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str], None]


class VideoEvents:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """`listener(video_id)` runs, synchronously, at every `notify`: keep it short."""
        self._listeners.append(listener)

    def notify(self, video_id: str) -> None:
        for listener in self._listeners:
            listener(video_id)
