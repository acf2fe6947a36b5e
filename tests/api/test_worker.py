"""The queue and worker with a scripted provider: success, retries, failures, cancel, takeover."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sora2.api.context import media_storage
from sora2.api.db import Database
from sora2.api.jobs.queue import JobQueue
from sora2.api.jobs.worker import Worker
from sora2.api.providers.base import ErrorKind, ProviderError
from sora2.settings import Settings
from tests.api.fake_provider import FAKE_JPEG, FAKE_MP4, ScriptedProvider
from tests.api.harness import RunningApi, wait_for
from tests.api.test_videos import PROMPT, balance, create, ledger


@asynccontextmanager
async def worker_running(
    settings: Settings, provider: ScriptedProvider, **kwargs: Any
) -> AsyncIterator[Worker]:
    database = Database(settings.resolved_database_url)
    worker = Worker(
        settings=settings,
        database=database,
        storage=media_storage(settings),
        provider=provider,
        **kwargs,
    )
    try:
        async with worker.running():
            yield worker
    finally:
        await database.dispose()


async def video_of(api: RunningApi, token: str, video_id: str) -> dict[str, Any]:
    status, body, _ = await api.request("GET", f"/api/videos/{video_id}", token=token)
    assert status == 200
    return dict(body)


async def until_status(
    api: RunningApi, token: str, video_id: str, *statuses: str, timeout: float = 15
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await video_of(api, token, video_id))
        return found["status"] in statuses

    await wait_for(reached, timeout=timeout)
    return found


async def test_a_job_runs_to_completion_and_serves_its_files(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        done = await until_status(api, token, video["id"], "completed")
    assert done["progress"] == 100
    assert done["videoBytes"] == len(FAKE_MP4)
    assert done["contentUrl"] == f"/api/videos/{video['id']}/content"
    assert provider.starts[PROMPT] == 1
    status, content, response = await api.request("GET", done["contentUrl"], token=token)
    assert status == 200
    assert content == FAKE_MP4
    assert response.headers["Content-Type"] == "video/mp4"
    assert "Content-Disposition" not in response.headers
    status, thumb, response = await api.request("GET", done["thumbnailUrl"], token=token)
    assert (status, thumb, response.headers["Content-Type"]) == (200, FAKE_JPEG, "image/jpeg")


async def test_content_supports_ranges_and_download(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        done = await until_status(api, token, video["id"], "completed")
    url = done["contentUrl"]
    size = len(FAKE_MP4)
    status, part, response = await api.request(
        "GET", url, token=token, headers={"Range": "bytes=10-19"}
    )
    assert status == 206
    assert part == FAKE_MP4[10:20]
    assert response.headers["Content-Range"] == f"bytes 10-19/{size}"
    status, tail, _ = await api.request("GET", url, token=token, headers={"Range": "bytes=-5"})
    assert (status, tail) == (206, FAKE_MP4[-5:])
    status, refused, response = await api.request(
        "GET", url, token=token, headers={"Range": f"bytes={size + 10}-"}
    )
    assert status == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"
    assert refused["details"] == {"size": size}
    status, body, _ = await api.request("GET", url, token=token, headers={"Range": "lines=1-2"})
    assert status == 400
    assert "Range" in body["message"]
    status, _, response = await api.request("GET", url + "?download=1", token=token)
    assert status == 200
    assert (
        response.headers["Content-Disposition"] == f'attachment; filename="sora2-{video["id"]}.mp4"'
    )


async def test_deleting_a_completed_video_removes_its_files(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        await until_status(api, token, video["id"], "completed")
    files = list((settings.data_dir / "media").rglob(f"{video['id']}.*"))
    assert len(files) == 2
    assert (await api.request("DELETE", f"/api/videos/{video['id']}", token=token))[0] == 204
    assert not any(path.exists() for path in files)
    assert await balance(api, token) == 96  # a completed video is not refunded


async def test_transient_errors_are_retried_without_a_second_generation(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.status_errors = [
        ProviderError(ErrorKind.TRANSIENT, "server_error", "upstream 503"),
        ProviderError(ErrorKind.TRANSIENT, "rate_limited", "429", retry_after=0.05),
    ]
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        await until_status(api, token, video["id"], "completed")
    assert provider.starts[PROMPT] == 1  # resumed from the stored provider job id each time
    assert await balance(api, token) == 96


async def test_a_final_error_fails_the_video_and_refunds_it(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.start_errors = [ProviderError(ErrorKind.FINAL, "content_policy", "Prompt refused")]
    token, _ = await api.register()
    _, video = await create(api, token, seconds=8)
    async with worker_running(settings, provider) as worker:
        failed = await until_status(api, token, video["id"], "failed")
    assert (failed["errorCode"], failed["errorMessage"]) == ("content_policy", "Prompt refused")
    assert await balance(api, token) == 100
    assert await ledger(api, token) == [("refund", 8), ("consume", -8), ("gift", 100)]
    assert 'code="content_policy"' in worker.metrics.render().decode()


async def test_a_generation_failed_upstream_is_refunded(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.fail_with = ("moderation_blocked", "The video was blocked by moderation")
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        failed = await until_status(api, token, video["id"], "failed")
    assert failed["errorCode"] == "moderation_blocked"
    assert await balance(api, token) == 100


async def test_transient_errors_give_up_after_the_attempt_limit(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    limited = settings.model_copy(update={"job_max_attempts": 3})
    provider.start_errors = [
        ProviderError(ErrorKind.TRANSIENT, "server_error", f"upstream 502 #{n}") for n in range(5)
    ]
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(limited, provider):
        failed = await until_status(api, token, video["id"], "failed")
    assert provider.starts[PROMPT] == 3
    assert failed["errorCode"] == "server_error"
    assert await ledger(api, token) == [("refund", 4), ("consume", -4), ("gift", 100)]


async def test_cancel_mid_generation_stops_it_upstream_and_refunds_once(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.hold = asyncio.Event()
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        running = await until_status(api, token, video["id"], "in_progress")
        await wait_for(lambda: _has_provider_job(provider))
        assert running["progress"] >= 0
        status, _, _ = await api.request("POST", f"/api/videos/{video['id']}/cancel", token=token)
        assert status == 200

        async def cancelled_upstream() -> bool:
            return provider.cancelled == ["job_1"]

        await wait_for(cancelled_upstream)
    assert (await video_of(api, token, video["id"]))["status"] == "cancelled"
    assert [kind for kind, _ in await ledger(api, token)].count("refund") == 1


async def _has_provider_job(provider: ScriptedProvider) -> bool:
    return bool(provider.jobs)


async def test_cancel_racing_completion_refunds_at_most_once(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    """The worker's completion and the user's cancel land together: one of them wins, cleanly."""
    token, _ = await api.register()
    outcomes = []
    for _ in range(4):
        _, video = await create(api, token)
        database = Database(settings.resolved_database_url)
        queue = JobQueue(database, worker_id="racer", lease_seconds=30)
        try:
            job = await queue.claim()
            assert job is not None
            assert job.video_id == video["id"]
            completed, (status, _, _) = await asyncio.gather(
                queue.complete(job, video_bytes=1),
                api.request("POST", f"/api/videos/{video['id']}/cancel", token=token),
            )
        finally:
            await database.dispose()
        assert completed != (status == 200)  # exactly one of them took effect
        final = await video_of(api, token, video["id"])
        assert final["status"] == ("completed" if completed else "cancelled")
        outcomes.append(final["status"])
    refunds = [kind for kind, _ in await ledger(api, token)].count("refund")
    assert refunds == outcomes.count("cancelled")
    assert await balance(api, token) == 100 - 4 * outcomes.count("completed")


async def test_a_dead_workers_job_is_taken_over_after_its_lease(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    """A worker that stored the provider's job id and died: the next one resumes, never restarts."""
    token, _ = await api.register()
    _, video = await create(api, token)
    database = Database(settings.resolved_database_url)
    try:
        dead = JobQueue(database, worker_id="dead-worker", lease_seconds=0.5)
        job = await dead.claim()
        assert job is not None
        provider_job = await provider.start(job.request)
        assert await dead.record_provider_job(job, provider_job)
    finally:
        await database.dispose()
    async with worker_running(settings, provider):
        done = await until_status(api, token, video["id"], "completed")
    assert provider.starts[PROMPT] == 1
    assert done["progress"] == 100


async def test_progress_streams_as_server_sent_events_until_done(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.polls_to_complete = 5
    token, _ = await api.register()
    _, video = await create(api, token)
    events: list[tuple[str, dict[str, Any]]] = []
    async with (
        worker_running(settings, provider),
        api.http.get(
            f"{api.url}/api/videos/{video['id']}/events",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert kinds.count("progress") >= 2
    progress = [data["progress"] for kind, data in events if kind == "progress"]
    assert progress == sorted(progress)
    assert events[-1][1]["status"] == "completed"


async def test_deleting_a_video_mid_generation_stops_it_upstream(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.hold = asyncio.Event()
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        await until_status(api, token, video["id"], "in_progress")
        await wait_for(lambda: _has_provider_job(provider))
        assert (await api.request("DELETE", f"/api/videos/{video['id']}", token=token))[0] == 204

        async def cancelled_upstream() -> bool:
            return provider.cancelled == ["job_1"]

        await wait_for(cancelled_upstream)
    assert await balance(api, token) == 100  # deleted while running: refunded like a cancel
    assert not list((settings.data_dir / "media").rglob(f"{video['id']}.*"))


async def test_waiting_for_a_resting_key_pool_uses_no_attempts(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    limited = settings.model_copy(update={"job_max_attempts": 2})
    provider.start_errors = [
        ProviderError(
            ErrorKind.RATE_LIMITED, "all_keys_resting", "every key rests", retry_after=0.01
        )
        for _ in range(6)
    ]
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(limited, provider):
        await until_status(api, token, video["id"], "completed", "failed")
    assert (await video_of(api, token, video["id"]))["status"] == "completed"
    assert provider.starts[PROMPT] == 7


async def test_a_slow_download_does_not_hold_up_other_requests(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        done = await until_status(api, token, video["id"], "completed")
    stored = next((settings.data_dir / "media" / "videos").rglob(f"{video['id']}.mp4"))
    stored.write_bytes(b"\x00" * (32 * 1024 * 1024))  # far more than the socket buffers hold
    headers = {"Authorization": f"Bearer {token}"}
    async with api.http.get(api.url + done["contentUrl"], headers=headers) as download:
        assert download.status == 200
        await download.content.readexactly(64 * 1024)  # ... and the reader stalls here
        async with asyncio.timeout(5):
            status, _ = await create(api, token)  # a write, while the download is open
        assert status == 202
