"""Paid work exactly once: the `openai` provider and real workers against the fake Videos API on
loopback, on SQLite and PostgreSQL. Each upstream job is a paid generation, so the tests count the
jobs the fake made (`fake.made`) and the ones still alive there (`fake.videos`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from sora2.api.context import media_storage
from sora2.api.db import Database
from sora2.api.jobs.models import UpstreamStop
from sora2.api.jobs.worker import Worker
from sora2.api.providers.openai import OpenAIProvider
from sora2.api.videos.models import Video
from sora2.settings import Settings
from tests.api.conftest import make_settings
from tests.api.harness import RunningApi, running_api, wait_for
from tests.api.test_ops import env_for
from tests.api.test_videos import balance, create, ledger
from tests.api.test_worker import until_status
from tests.fakes.fake_videos_api import FakeVideosAPI
from tests.fakes.servers import RunningServer, start_app

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")
KEY = "sk-test-paid-000000000000000000000000"
TIMEOUT_MS = 300


@dataclass
class Upstream:
    fake: FakeVideosAPI
    server: RunningServer
    settings: Settings


@asynccontextmanager
async def upstream_for(
    settings: Settings, *, honour_idempotency: bool = True, **overrides: Any
) -> AsyncIterator[Upstream]:
    fake = FakeVideosAPI(keys=[KEY], polls_to_complete=3)
    fake.honour_idempotency = honour_idempotency
    # A create whose client gave up still lands upstream, as on a real server.
    server = await start_app(fake.app(), handler_cancellation=False)
    values: dict[str, Any] = {
        "video_provider": "openai",
        "openai_api_keys": KEY,
        "openai_base_url": f"{server.url}/v1",
        "openai_timeout_ms": TIMEOUT_MS,
        "job_retry_base_ms": 50,
        "job_retry_max_ms": 200,
    }
    paid = make_settings(settings.database_url or "", settings.data_dir, **(values | overrides))
    try:
        yield Upstream(fake, server, paid)
    finally:
        await server.stop()


@asynccontextmanager
async def api_and_workers(upstream: Upstream, *, workers: int = 1) -> AsyncIterator[RunningApi]:
    settings = upstream.settings
    provider = OpenAIProvider.from_settings(settings)
    database = Database(settings.resolved_database_url)
    running = [
        Worker(
            settings=settings,
            database=database,
            storage=media_storage(settings),
            provider=provider,
        )
        for _ in range(workers)
    ]
    try:
        async with running_api(settings, provider) as api:
            tasks = [asyncio.create_task(worker.run()) for worker in running]
            try:
                yield api
            finally:
                for worker in running:
                    await worker.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await provider.close()
        await database.dispose()


async def recorded_upstream_id(settings: Settings, video_id: str) -> str | None:
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            found = await session.execute(select(Video.provider_job_id).where(Video.id == video_id))
            return found.scalar_one_or_none()
    finally:
        await database.dispose()


async def outbox_empty(settings: Settings) -> bool:
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            pending = await session.execute(
                select(UpstreamStop.id).where(UpstreamStop.done_at.is_(None))
            )
            return pending.first() is None
    finally:
        await database.dispose()


@pytest.mark.parametrize("honour", [True, False], ids=["key-honoured", "key-ignored"])
async def test_a_create_answered_after_the_timeout_makes_one_paid_generation(
    settings: Settings, honour: bool
) -> None:
    """Reported: one video started five paid generations upstream, then failed."""
    async with upstream_for(settings, honour_idempotency=honour) as upstream:
        upstream.fake.create_answer_delay = 3 * TIMEOUT_MS / 1000  # every create, made at once
        async with api_and_workers(upstream) as api:
            token, _ = await api.register()
            _, video = await create(api, token)
            done = await until_status(api, token, video["id"], "completed", "failed", timeout=30)
            assert await balance(api, token) == 96
        assert done["status"] == "completed", done
        assert len(upstream.fake.made) == 1
        assert list(upstream.fake.videos) == upstream.fake.made
        keys = {call.idempotency_key for call in upstream.fake.calls_to("POST")}
        assert len(keys) == 1  # one key, sent with every create
        assert None not in keys


@pytest.mark.parametrize(
    "lands_after", [1.5, 2.5], ids=["before-the-first-search", "after-the-first-search"]
)
async def test_a_duplicate_that_lands_late_is_deleted_upstream(
    settings: Settings, lands_after: float
) -> None:
    """An upstream ignoring the key, whose first create lands after the client gave up and after
    the retry made a second job: the late one is found and deleted, the video completes once.
    Searches run at 2, 4 and 8 create timeouts; a create landing after the first (reported: a
    loaded upstream, one search at a fixed moment, the duplicate kept forever) is found by the next.
    """
    timeout_ms = 2 * TIMEOUT_MS
    async with upstream_for(
        settings, honour_idempotency=False, openai_timeout_ms=timeout_ms
    ) as upstream:
        upstream.fake.slow_creates = 1
        upstream.fake.create_land_delay = lands_after * timeout_ms / 1000
        async with api_and_workers(upstream) as api:
            token, _ = await api.register()
            _, video = await create(api, token)
            done = await until_status(api, token, video["id"], "completed", "failed", timeout=30)
            assert done["status"] == "completed", done

            async def duplicate_gone() -> bool:
                return len(upstream.fake.made) == 2 and len(upstream.fake.videos) == 1

            await wait_for(duplicate_gone, timeout=15)
            await wait_for(lambda: outbox_empty(upstream.settings), timeout=15)
            assert await balance(api, token) == 96


def _start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", "worker"],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("honour", [True, False], ids=["key-honoured", "key-ignored"])
async def test_a_worker_killed_mid_create_leaves_one_live_generation(
    settings: Settings, honour: bool
) -> None:
    """Reported: with a worker killed in the middle of a create, the video completed but two
    upstream generations stayed alive."""
    async with upstream_for(
        settings, honour_idempotency=honour, openai_timeout_ms=20_000
    ) as upstream:
        fake = upstream.fake
        fake.slow_creates = 1
        fake.create_answer_delay = 60.0  # the job exists; its answer never reaches the worker
        env = env_for(upstream.settings) | {
            "VIDEO_PROVIDER": "openai",
            "OPENAI_BASE_URL": f"{upstream.server.url}/v1",
            "OPENAI_API_KEYS": KEY,
            "OPENAI_TIMEOUT_MS": "20000",
            "WORKER_LEASE_SECONDS": "1.5",
            "WORKER_PROVIDER_POLL_MS": "50",
            "WORKER_IDLE_POLL_MS": "50",
        }
        workers: list[subprocess.Popen[bytes]] = []
        provider = OpenAIProvider.from_settings(upstream.settings)
        try:
            async with running_api(upstream.settings, provider) as api:
                token, _ = await api.register()
                _, video = await create(api, token)
                workers.append(_start_worker(env))

                async def created_upstream() -> bool:
                    return len(fake.made) == 1

                await wait_for(created_upstream, timeout=30)
                workers[0].send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(workers[0].wait, 10) == -signal.SIGKILL
                workers.append(_start_worker(env))
                done = await until_status(
                    api, token, video["id"], "completed", "failed", timeout=90
                )
                assert done["status"] == "completed", done

                async def one_alive() -> bool:
                    return len(fake.videos) == 1

                await wait_for(one_alive, timeout=30)
                assert len(fake.made) == 1  # adopted, never made again
                assert await balance(api, token) == 96
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.terminate()
                    await asyncio.to_thread(worker.wait, 20)
            await provider.close()


async def test_a_cancel_stops_the_upstream_job_once_the_provider_is_back(
    settings: Settings,
) -> None:
    """A queued video that already has an upstream job, cancelled while the provider is down:
    the outbox keeps trying until the provider confirms the job is gone."""
    async with upstream_for(settings, worker_provider_poll_ms=20) as upstream:
        fake = upstream.fake
        fake.polls_to_complete = 10_000
        async with api_and_workers(upstream) as api:
            token, _ = await api.register()
            _, video = await create(api, token)

            async def started_upstream() -> bool:
                return len(fake.videos) == 1

            await wait_for(started_upstream, timeout=15)
            fake.server_errors_left = 6  # the next requests (the DELETEs among them) fail
            status, _, _ = await api.request(
                "POST", f"/api/videos/{video['id']}/cancel", token=token
            )
            assert status == 200

            async def stopped_upstream() -> bool:
                return not fake.videos

            await wait_for(stopped_upstream, timeout=15)
            await wait_for(lambda: outbox_empty(upstream.settings), timeout=15)
            assert await ledger(api, token) == [("refund", 4), ("consume", -4), ("gift", 100)]
        deletes = fake.calls_to("DELETE")
        assert [call.status for call in deletes][-1] == 200


async def test_a_final_failure_after_a_job_was_made_deletes_it_upstream(
    settings: Settings,
) -> None:
    async with upstream_for(settings, job_max_attempts=2) as upstream:
        fake = upstream.fake
        fake.polls_to_complete = 10_000
        async with api_and_workers(upstream) as api:
            token, _ = await api.register()
            _, video = await create(api, token)

            async def started_upstream() -> bool:
                return len(fake.made) == 1

            await wait_for(started_upstream, timeout=15)
            fake.server_errors_left = 1_000  # from now on every call fails
            done = await until_status(api, token, video["id"], "failed", timeout=15)
            assert done["errorCode"] == "server_error"
            fake.server_errors_left = 0
            await wait_for(lambda: outbox_empty(upstream.settings), timeout=15)
            assert await balance(api, token) == 100
        assert not fake.videos


async def test_deleting_a_video_mid_generation_stops_its_upstream_job(
    settings: Settings,
) -> None:
    async with upstream_for(settings) as upstream:
        fake = upstream.fake
        fake.polls_to_complete = 10_000
        async with api_and_workers(upstream) as api:
            token, _ = await api.register()
            _, video = await create(api, token)

            async def recorded() -> bool:
                return await recorded_upstream_id(upstream.settings, video["id"]) is not None

            await wait_for(recorded, timeout=15)
            status, _, _ = await api.request("DELETE", f"/api/videos/{video['id']}", token=token)
            assert status == 204

            async def stopped_upstream() -> bool:
                return not fake.videos

            await wait_for(stopped_upstream, timeout=15)
            await wait_for(lambda: outbox_empty(upstream.settings), timeout=15)
    database = Database(upstream.settings.resolved_database_url)
    try:
        async with database.session() as session:
            rows = (await session.execute(select(UpstreamStop))).scalars().all()
    finally:
        await database.dispose()
    assert [(row.provider_job_id, row.reason) for row in rows] == [(fake.made[0], "cancelled")]
