"""Live progress for `/api/videos/{id}/events`: one poller per api process serves every stream.

Each stream registers a watcher of its video. One task, the poller, reads every watched video in
ONE query per `SSE_POLL_INTERVAL_MS`, whatever the number of streams or videos, and wakes the
watchers of the videos whose state (status, progress) changed. A state is encoded once for all
its watchers; a stream only copies bytes.

A change can wake the poller before its interval, and then it reads just the changed videos:
- made in this process (the embedded worker, a cancel, a delete): `VideoEvents.notify`;
- made by any process, on PostgreSQL: a trigger on `videos` sends `NOTIFY sora2_video_changes`
  with the video's id when a change of status or progress (or a delete) commits, and every api
  process LISTENs on one connection of its own. While that connection is down, the interval poll
  is the fallback; on SQLite it is the only way across processes.

Every `SSE_HEARTBEAT_SECONDS` the poller also checks, in one query, that the sessions behind the
streams are still live: the stream of a signed-out or suspended user ends. An idle stream sends a
comment line as often, so that intermediaries which close quiet connections keep it open.

Event ids name the state (`in_progress-40`, `completed-100-done`), so a client that reconnects
with `Last-Event-ID` gets the current state only if it differs from the last one it saw; one that
already saw `done` gets 204, which tells `EventSource` to stop reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url

from sora2.api.auth.models import AuthSession
from sora2.api.db import Database
from sora2.api.events import VideoEvents
from sora2.api.metrics import ApiMetrics
from sora2.api.users.models import User
from sora2.api.videos.models import FINAL_STATUSES, Video
from sora2.api.videos.schemas import VideoOut

logger = logging.getLogger("sora2.api.live")

CHANNEL = "sora2_video_changes"
DELETED = "deleted"
HEARTBEAT = b": keep-alive\n\n"
LISTEN_RETRY_SECONDS = 2.0

# A monotonic clock: which of two reads of a video is the newer is the one that started later.
clock = time.monotonic


def _frame(name: str, event_id: str, data: str) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()


def _deleted_event(video_id: str) -> bytes:
    return _frame("deleted", DELETED, json.dumps({"id": video_id}))


def state_key(row: Mapping[str, Any]) -> str:
    """The id of the `progress` event of a video in this state (`in_progress-40`)."""
    return f"{row['status']}-{row['progress']}"


def finished_events(row: Mapping[str, Any], last_event_id: str | None) -> bytes | None:
    """All a stream of this video would send, when it is final (nothing can follow); None
    while it is still in the works. One plain response then answers, instead of a stream
    registered with the poller for the instant it takes to send its last two events."""
    if row["status"] not in FINAL_STATUSES:
        return None
    watcher = Watcher(row["id"], user_id=row["user_id"], session_id="", last_event_id=last_event_id)
    events, _ = watcher.pending(VideoState(row["id"], row))
    return events


def already_delivered(row: Mapping[str, Any], last_event_id: str | None) -> bool:
    """True when a client that saw `last_event_id` already has everything this video will say."""
    return row["status"] in FINAL_STATUSES and last_event_id == f"{state_key(row)}-done"


class VideoState:
    """One read of a video as its watchers see it, encoded once for all of them."""

    __slots__ = ("done", "done_id", "final", "key", "owner", "progress")
    owner: str | None

    def __init__(self, video_id: str, row: Mapping[str, Any] | None) -> None:
        if row is None:
            self.key, self.owner, self.final = DELETED, None, True
            self.progress, self.done, self.done_id = _deleted_event(video_id), b"", DELETED
            return
        snapshot = VideoOut.model_validate(row).model_dump_json(by_alias=True)
        self.key = state_key(row)
        self.owner = row["user_id"]
        self.final = row["status"] in FINAL_STATUSES
        self.progress = _frame("progress", self.key, snapshot)
        self.done_id = f"{self.key}-done"
        self.done = _frame("done", self.done_id, snapshot) if self.final else b""


class Watcher:
    """One stream's view: what it last sent, and the wake-up the poller sets."""

    __slots__ = ("_wake", "ended", "last_id", "session_id", "user_id", "video_id")

    def __init__(
        self, video_id: str, *, user_id: str, session_id: str, last_event_id: str | None
    ) -> None:
        self.video_id = video_id
        self.user_id = user_id
        self.session_id = session_id
        self.last_id = last_event_id
        self.ended = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def woken(self, timeout: float) -> bool:
        """True when woken, False when `timeout` passed first (time for a heartbeat)."""
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    def pending(self, state: VideoState) -> tuple[bytes, bool]:
        """The events this watcher has not sent yet for `state`, and whether the stream ends."""
        if state.owner != self.user_id:  # deleted (someone else's video never gets this far)
            return _deleted_event(self.video_id), True
        if state.final:
            if self.last_id == state.done_id:
                return b"", True
            progress = b"" if self.last_id == state.key else state.progress
            self.last_id = state.done_id
            return progress + state.done, True
        if self.last_id == state.key:
            return b"", False
        self.last_id = state.key
        return state.progress, False


class _Watched:
    """A watched video: its newest state and who watches it."""

    __slots__ = ("read_at", "state", "watchers")

    def __init__(self, state: VideoState, read_at: float) -> None:
        self.state = state
        self.read_at = read_at
        self.watchers: set[Watcher] = set()

    def offer(self, video_id: str, row: Mapping[str, Any] | None, read_at: float) -> None:
        """Takes a read that started after the current one; wakes the watchers on a change."""
        if read_at <= self.read_at:
            return
        self.read_at = read_at
        key = DELETED if row is None else state_key(row)
        if key == self.state.key:
            return
        self.state = VideoState(video_id, row)
        for watcher in self.watchers:
            watcher.wake()


def _in(column: Any, *, sqlite: bool) -> ColumnElement[bool]:
    """`column IN (the ids)` with ONE bound parameter whatever their number (see `_ids_param`)."""
    if sqlite:
        ids = func.json_each(bindparam("ids")).table_valued("value")
        return column.in_(select(ids.c.value).scalar_subquery())  # type: ignore[no-any-return]
    return column == any_(bindparam("ids", type_=ARRAY(String)))  # type: ignore[no-any-return]


def _ids_param(ids: Sequence[str], *, sqlite: bool) -> object:
    return json.dumps(list(ids)) if sqlite else list(ids)


class LiveProgress:
    """The watchers of one api process and the poller that feeds them (see the module's doc)."""

    def __init__(
        self,
        database: Database,
        events: VideoEvents,
        *,
        poll_interval: float,
        heartbeat: float,
        metrics: ApiMetrics,
    ) -> None:
        self.database = database
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.metrics = metrics
        self._videos: dict[str, _Watched] = {}
        self._changed: set[str] = set()
        self._poll_all = False
        self._due = asyncio.Event()
        sqlite = database.is_sqlite
        self._sqlite = sqlite
        self._videos_query: Select[Any] = select(*Video.__table__.c).where(
            _in(Video.id, sqlite=sqlite)
        )
        self._live_sessions_query: Select[Any] = (
            select(AuthSession.id)
            .join(User, User.id == AuthSession.user_id)
            .where(
                _in(AuthSession.id, sqlite=sqlite),
                AuthSession.revoked_at.is_(None),
                User.status == "active",
            )
        )
        self._failing = False
        self._closing = False
        events.subscribe(self.changed)

    def close(self) -> None:
        """Ends every stream, and any that starts from now on: the process is shutting down.

        Streams never end on their own, so the server would wait its whole graceful-shutdown
        timeout for them; ended, their clients reconnect (with `Last-Event-ID`) to a process
        that stays, and miss nothing."""
        self._closing = True
        for watched in self._videos.values():
            for watcher in watched.watchers:
                watcher.end()

    # --- what wakes the poller -------------------------------------------------------------

    def changed(self, video_id: str) -> None:
        """`video_id` changed (here, or in another process): read it now if anyone watches it."""
        if video_id in self._videos:
            self._changed.add(video_id)
            self._due.set()

    def _reconnected(self) -> None:
        """Changes made while nobody listened were not announced: read everything now."""
        self._poll_all = True
        self._due.set()

    # --- streams ---------------------------------------------------------------------------

    async def stream(
        self,
        video: Mapping[str, Any],
        *,
        read_at: float,
        user_id: str,
        session_id: str,
        last_event_id: str | None,
    ) -> AsyncIterator[bytes]:
        """The stream's events, from `video` (the route's read, started at `read_at`) on.

        Registers when the response starts and unregisters however it ends (done, the client
        gone, its session revoked), so an abandoned stream never stays watched."""
        if self._closing:
            return
        video_id: str = video["id"]
        watcher = Watcher(
            video_id, user_id=user_id, session_id=session_id, last_event_id=last_event_id
        )
        watched = self._watch(watcher, video, read_at)
        try:
            while not watcher.ended:
                chunk, finished = watcher.pending(watched.state)
                if chunk:
                    yield chunk
                if finished:
                    return
                if not await watcher.woken(self.heartbeat):
                    yield HEARTBEAT
        finally:
            self._unwatch(watcher, watched)

    def _watch(self, watcher: Watcher, video: Mapping[str, Any], read_at: float) -> _Watched:
        watched = self._videos.get(watcher.video_id)
        if watched is None:
            watched = _Watched(VideoState(watcher.video_id, video), read_at)
            self._videos[watcher.video_id] = watched
        else:
            watched.offer(watcher.video_id, video, read_at)
        watched.watchers.add(watcher)
        self.metrics.live_watchers.inc()
        return watched

    def _unwatch(self, watcher: Watcher, watched: _Watched) -> None:
        watched.watchers.discard(watcher)
        self.metrics.live_watchers.dec()
        if not watched.watchers and self._videos.get(watcher.video_id) is watched:
            del self._videos[watcher.video_id]

    # --- the poller ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LiveProgress]:
        """Polls (and on PostgreSQL listens) for the block's duration."""
        tasks = [asyncio.create_task(self._poll_forever(), name="live progress: poller")]
        if not self._sqlite:
            tasks.append(asyncio.create_task(self._listen_forever(), name="live progress: listen"))
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll_forever(self) -> None:
        next_poll = clock() + self.poll_interval
        next_access_check = clock() + self.heartbeat
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(next_poll, next_access_check) - clock())):
                    await self._due.wait()
            self._due.clear()
            now = clock()
            if now >= next_poll or self._poll_all:
                self._poll_all, next_poll = False, now + self.poll_interval
                self._changed.clear()
                await self._safely(self._poll(self._unfinished(), reason="interval"))
            elif self._changed:
                changed, self._changed = self._changed, set()
                await self._safely(self._poll(changed, reason="change"))
            if now >= next_access_check:
                next_access_check = now + self.heartbeat
                await self._safely(self._check_access())

    def _unfinished(self) -> list[str]:
        return [video_id for video_id, w in self._videos.items() if not w.state.final]

    async def _safely(self, step: Any) -> None:
        """A database outage must not end the poller: streams wait, and it tries again."""
        try:
            await step
        except Exception as error:
            if not self._failing:
                logger.warning("live progress: reading the database failed: %r", error)
            self._failing = True
        else:
            self._failing = False

    async def _poll(self, video_ids: Sequence[str] | set[str], *, reason: str) -> None:
        ids = [video_id for video_id in video_ids if video_id in self._videos]
        if not ids:
            return
        self.metrics.live_polls.labels(reason).inc()
        read_at = clock()
        async with self.database.read_connection() as connection:
            result = await connection.execute(
                self._videos_query, {"ids": _ids_param(ids, sqlite=self._sqlite)}
            )
            rows = {row.id: row._asdict() for row in result}
        for video_id in ids:
            watched = self._videos.get(video_id)
            if watched is not None:
                watched.offer(video_id, rows.get(video_id), read_at)

    async def _check_access(self) -> None:
        watchers = [w for watched in self._videos.values() for w in watched.watchers]
        if not watchers:
            return
        self.metrics.live_polls.labels("access").inc()
        sessions = sorted({watcher.session_id for watcher in watchers})
        async with self.database.read_connection() as connection:
            result = await connection.execute(
                self._live_sessions_query, {"ids": _ids_param(sessions, sqlite=self._sqlite)}
            )
            live = set(result.scalars())
        for watcher in watchers:
            if watcher.session_id not in live:
                watcher.end()

    # --- PostgreSQL: LISTEN ----------------------------------------------------------------

    async def _listen_forever(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        dsn = make_url(self.database.url).set(drivername="postgresql")
        while True:
            try:
                connection = await asyncpg.connect(dsn.render_as_string(hide_password=False))
            except (OSError, asyncpg.PostgresError) as error:
                logger.warning("live progress: cannot LISTEN (%r); polling meanwhile", error)
                await asyncio.sleep(LISTEN_RETRY_SECONDS)
                continue
            try:
                await self._listen_on(connection)
            except (OSError, asyncpg.PostgresError) as error:
                logger.warning("live progress: LISTEN lost (%r); polling meanwhile", error)
            finally:
                with contextlib.suppress(Exception):
                    await connection.close(timeout=1)
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    async def _listen_on(self, connection: Any) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())

        def on_notification(_connection: Any, _pid: int, _channel: str, video_id: str) -> None:
            self.metrics.live_notifications.inc()
            self.changed(video_id)

        await connection.add_listener(CHANNEL, on_notification)
        self._reconnected()
        await lost.wait()
