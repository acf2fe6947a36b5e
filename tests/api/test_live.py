"""Live progress (`/api/videos/{id}/events`): one poller per api process, NOTIFY across processes,
heartbeats, `Last-Event-ID` resume, access checks, and hundreds of streams on one api."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from sora2.api.db import Database
from sora2.api.users.models import User
from sora2.settings import Settings
from tests.api.conftest import is_postgres, make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, running_api, wait_for
from tests.api.test_ops import env_for
from tests.api.test_videos import create
from tests.api.test_worker import worker_running
from tests.fakes.fake_videos_api import FakeVideosAPI
from tests.fakes.servers import free_port, start_app

# So long that only something else than the interval poll can bring a change in time.
NEVER_POLLS_MS = 60_000
KEY = "sk-test-live-0000000000000000000000000"


@dataclass
class Sse:
    """One block of a server-sent-events stream: an event, or a comment (a heartbeat)."""

    event: str | None = None
    id: str | None = None
    data: Any = None
    comment: str | None = None


class EventReader:
    """Reads a `/events` response block by block."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 15) -> Sse | None:
        """The next block, or None at the end of the stream."""
        block = Sse()
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if line == "":
                    if block != Sse():
                        return block
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    block.comment = value
                elif field == "event":
                    block.event = value
                elif field == "id":
                    block.id = value
                elif field == "data":
                    block.data = json.loads(value)

    async def next_event(self, timeout: float = 15) -> Sse | None:
        """The next event, skipping heartbeats; None at the end of the stream."""
        while (block := await self.next(timeout)) is not None:
            if block.comment is None:
                return block
        return None

    async def rest(self, timeout: float = 30) -> list[Sse]:
        """Every event until the stream ends."""
        events = []
        async with asyncio.timeout(timeout):
            while (block := await self.next_event(timeout)) is not None:
                events.append(block)
        return events


@contextlib.asynccontextmanager
async def watching(
    api: RunningApi,
    token: str,
    video_id: str,
    *,
    last_event_id: str | None = None,
    http: aiohttp.ClientSession | None = None,
) -> AsyncIterator[EventReader]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (http or api.http).get(
        f"{api.url}/api/videos/{video_id}/events", headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield EventReader(response)


def metric(api: RunningApi, name: str, **labels: str) -> float:
    """A figure of the api's own Prometheus registry (the app runs in this process)."""
    app = api.server.config.app
    assert isinstance(app, FastAPI)
    registry = app.state.context.metrics.registry
    return float(registry.get_sample_value(name, labels) or 0.0)


def live_queries(api: RunningApi) -> tuple[float, float]:
    """(statements sent to the database, queries the live-progress poller made)."""
    polls = sum(
        metric(api, "sora2_live_polls_total", reason=reason)
        for reason in ("interval", "change", "access")
    )
    return metric(api, "sora2_api_database_queries_total"), polls


@contextlib.asynccontextmanager
async def api_with(settings: Settings, **overrides: Any) -> AsyncIterator[RunningApi]:
    tuned = make_settings(str(settings.database_url), settings.data_dir, **overrides)
    async with running_api(tuned, ScriptedProvider()) as api:
        yield api


async def test_events_carry_ids_and_the_stream_ends_on_a_final_state(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    async with watching(api, token, video["id"]) as stream:
        first = await stream.next_event()
        assert first is not None
        assert (first.event, first.id, first.data["status"]) == ("progress", "queued-0", "queued")
        cancel = await api.request("POST", f"/api/videos/{video['id']}/cancel", token=token)
        assert cancel[0] == 200
        rest = await stream.rest()
    assert [(e.event, e.id) for e in rest] == [
        ("progress", "cancelled-0"),
        ("done", "cancelled-0-done"),
    ]
    assert rest[-1].data["status"] == "cancelled"


async def test_a_change_in_this_process_wakes_watchers_without_waiting_for_the_poll(
    settings: Settings,
) -> None:
    async with api_with(settings, sse_poll_interval_ms=NEVER_POLLS_MS) as api:
        token, _ = await api.register()
        _, video = await create(api, token)
        async with watching(api, token, video["id"]) as stream:
            assert (await stream.next_event()) is not None
            await api.request("POST", f"/api/videos/{video['id']}/cancel", token=token)
            event = await stream.next_event(timeout=10)
        assert event is not None
        assert event.data["status"] == "cancelled"


async def test_deleting_a_watched_video_tells_its_watchers(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    async with watching(api, token, video["id"]) as stream:
        assert (await stream.next_event()) is not None
        assert (await api.request("DELETE", f"/api/videos/{video['id']}", token=token))[0] == 204
        rest = await stream.rest()
    # Deleting a queued video cancels (and refunds) it in a commit of its own first: a watcher
    # that read the video in between hears of the cancel, and its stream ends there.
    assert [(e.event, e.data) for e in rest] in (
        [("deleted", {"id": video["id"]})],
        [("progress", rest[0].data), ("done", rest[0].data)],
    )
    assert rest[0].data.get("status", "cancelled") == "cancelled"


async def test_an_idle_stream_sends_heartbeat_comments(settings: Settings) -> None:
    async with api_with(settings, sse_heartbeat_seconds=0.1) as api:
        token, _ = await api.register()
        _, video = await create(api, token)
        async with watching(api, token, video["id"]) as stream:
            blocks = [await stream.next() for _ in range(4)]
    assert blocks[0] is not None
    assert blocks[0].event == "progress"
    assert [block.comment if block else None for block in blocks[1:]] == ["keep-alive"] * 3


async def test_last_event_id_resumes_without_repeating_or_losing_a_state(
    settings: Settings,
) -> None:
    async with api_with(settings, sse_heartbeat_seconds=0.1) as api:
        token, _ = await api.register()
        _, video = await create(api, token)
        path = f"/api/videos/{video['id']}"
        # Nothing changed since the client's last event: the stream says nothing but heartbeats.
        async with watching(api, token, video["id"], last_event_id="queued-0") as stream:
            assert (await stream.next()) == Sse(comment="keep-alive")
        # A change while it was away: it gets the new state at once, then the end.
        await api.request("POST", f"{path}/cancel", token=token)
        async with watching(api, token, video["id"], last_event_id="queued-0") as stream:
            assert [e.id for e in await stream.rest()] == ["cancelled-0", "cancelled-0-done"]
        # It saw the final state but not `done`: only `done`.
        async with watching(api, token, video["id"], last_event_id="cancelled-0") as stream:
            assert [e.id for e in await stream.rest()] == ["cancelled-0-done"]
        # It saw everything: 204 tells EventSource to stop reconnecting.
        status, body, _ = await api.request(
            "GET", f"{path}/events", token=token, headers={"Last-Event-ID": "cancelled-0-done"}
        )
        assert (status, body) == (204, b"")
        # An id that names no state of this video is no reason to skip anything.
        async with watching(api, token, video["id"], last_event_id="nonsense") as stream:
            assert [e.id for e in await stream.rest()] == ["cancelled-0", "cancelled-0-done"]


async def test_a_signed_out_session_ends_its_streams(settings: Settings) -> None:
    async with api_with(settings, sse_heartbeat_seconds=0.1) as api:
        token, _ = await api.register()
        _, video = await create(api, token)
        async with watching(api, token, video["id"]) as stream:
            assert (await stream.next_event()) is not None
            assert (await api.request("POST", "/api/auth/logout", token=token))[0] == 200
            assert (await stream.rest(timeout=10)) == []
        status, _, _ = await api.request("GET", f"/api/videos/{video['id']}/events", token=token)
        assert status == 401


async def test_a_suspended_users_streams_end(settings: Settings) -> None:
    async with api_with(settings, sse_heartbeat_seconds=0.1) as api:
        token, body = await api.register()
        _, video = await create(api, token)
        async with watching(api, token, video["id"]) as stream:
            assert (await stream.next_event()) is not None
            await _suspend(settings, body["user"]["id"])
            assert (await stream.rest(timeout=10)) == []


async def _suspend(settings: Settings, user_id: str) -> None:
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            await session.execute(update(User).where(User.id == user_id).values(status="banned"))
            await session.commit()
    finally:
        await database.dispose()


async def test_someone_elses_video_cannot_be_resumed_either(api: RunningApi) -> None:
    owner, _ = await api.register()
    _, video = await create(api, owner)
    stranger, _ = await api.register()
    status, _, _ = await api.request(
        "GET",
        f"/api/videos/{video['id']}/events",
        token=stranger,
        headers={"Last-Event-ID": "queued-0"},
    )
    assert status == 404


async def test_one_query_per_poll_whatever_the_number_of_watchers(settings: Settings) -> None:
    async with api_with(settings, sse_poll_interval_ms=50, sse_heartbeat_seconds=0.2) as api:
        token, _ = await api.register()
        videos = [(await create(api, token))[1]["id"] for _ in range(20)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            per_poll = {}
            for count in (2, 200):
                async with contextlib.AsyncExitStack() as stack:
                    for n in range(count):
                        await stack.enter_async_context(
                            watching(api, token, videos[n % len(videos)], http=http)
                        )
                    await wait_for(_watchers(api, count))
                    per_poll[count] = await _queries_per_poll(api, polls=10)
    assert per_poll == {2: 1.0, 200: 1.0}


def _watchers(api: RunningApi, count: int) -> Any:
    async def reached() -> bool:
        return metric(api, "sora2_live_watchers") == count

    return reached


async def _queries_per_poll(api: RunningApi, *, polls: int) -> float:
    """Database statements per poller query over `polls` queries, nothing else running."""
    queries_before, polls_before = live_queries(api)

    async def polled() -> bool:
        queries, made = live_queries(api)
        # A poll counts itself just before its query goes out: wait until both agree.
        return made - polls_before >= polls and queries - queries_before == made - polls_before

    await wait_for(polled, timeout=20, interval=0.005)
    queries, made = live_queries(api)
    return (queries - queries_before) / (made - polls_before)


@pytest.fixture
def many_files() -> None:
    """Hundreds of streams are hundreds of sockets on each side, all in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


@pytest.mark.usefixtures("many_files")
async def test_hundreds_of_watchers_on_one_api_while_ordinary_requests_answer(
    settings: Settings,
) -> None:
    streams_per_video, videos_count = 15, 20  # 20 videos: the credits a new account has
    async with api_with(settings, sse_heartbeat_seconds=0.5) as api:
        token, _ = await api.register()
        videos = [(await create(api, token))[1]["id"] for _ in range(videos_count)]
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            contextlib.AsyncExitStack() as stack,
        ):
            streams = [
                await stack.enter_async_context(watching(api, token, video_id, http=http))
                for video_id in videos
                for _ in range(streams_per_video)
            ]
            readers = [asyncio.create_task(stream.rest(timeout=60)) for stream in streams]
            await wait_for(_watchers(api, len(streams)))
            for video_id in videos:  # ordinary requests still answer, and at once
                for path in (f"/api/videos/{video_id}", "/api/credits/balance"):
                    async with asyncio.timeout(5):
                        assert (await api.request("GET", path, token=token))[0] == 200
            provider = ScriptedProvider(polls_to_complete=3)
            async with worker_running(
                settings.model_copy(update={"worker_concurrency": 16}), provider
            ):
                seen = await asyncio.gather(*readers)
    assert len(seen) == 300
    for events in seen:
        assert [e.event for e in events][-2:] == ["progress", "done"]
        assert events[-1].data["status"] == "completed"
        assert len({e.id for e in events}) == len(events)  # no state twice


async def test_a_change_from_another_process_reaches_watchers(settings: Settings) -> None:
    """A `sora2 serve worker` process drives the job. On PostgreSQL the api's interval poll is
    too slow to matter: only NOTIFY can bring the changes in time."""
    postgres = is_postgres(settings)
    fake = FakeVideosAPI(keys=[KEY], polls_to_complete=10)
    upstream = await start_app(fake.app())
    env = env_for(settings) | {
        "VIDEO_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"{upstream.url}/v1",
        "OPENAI_API_KEYS": KEY,
        "WORKER_PROVIDER_POLL_MS": "100",
        "WORKER_IDLE_POLL_MS": "50",
    }
    interval = NEVER_POLLS_MS if postgres else 50
    worker: subprocess.Popen[bytes] | None = None
    try:
        async with api_with(settings, sse_poll_interval_ms=interval) as api:
            token, _ = await api.register()
            _, video = await create(api, token)
            async with watching(api, token, video["id"]) as stream:
                first = await stream.next_event()
                assert first is not None
                assert first.id == "queued-0"
                worker = _start_worker(env)
                events = await stream.rest(timeout=45)
            assert [e.event for e in events][-2:] == ["progress", "done"]
            assert events[-1].data["status"] == "completed"
            assert len([e for e in events if e.data["status"] == "in_progress"]) >= 2
            if postgres:
                # Each change came with its own NOTIFY (`done` shares the last one's).
                assert metric(api, "sora2_live_notifications_total") >= len(events) - 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 20)
        await upstream.stop()


def _start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", "worker"],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_stopping_the_api_ends_its_streams_instead_of_waiting_for_them(
    settings: Settings,
) -> None:
    """`sora2 serve api` given SIGTERM with a stream open: the stream ends cleanly at once (its
    client reconnects elsewhere) rather than holding the shutdown for its 10 s grace."""
    port = free_port()
    env = env_for(settings) | {"API_PORT": str(port), "API_EMBEDDED_WORKER": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", "api"],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}"

            async def answering() -> bool:
                try:
                    async with http.get(f"{url}/api/health/live") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    assert process.poll() is None, "the api process exited"
                    return False

            await wait_for(answering, timeout=30, interval=0.1)
            served = RunningApi(url, settings, None, http)  # type: ignore[arg-type]
            token, _ = await served.register()
            _, video = await create(served, token)
            async with watching(served, token, video["id"]) as stream:
                assert (await stream.next_event()) is not None
                process.send_signal(signal.SIGTERM)
                # Ended before the grace period (10 s) ran out, with the chunked body complete.
                assert (await stream.rest(timeout=8)) == []
        assert await asyncio.to_thread(process.wait, 8) == 0
    finally:
        if process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait, 10)
