"""The real providers end to end: the local renderer through the api's embedded worker, and a
`sora2 serve worker` process killed with SIGKILL mid-job whose job another worker resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import pytest
from sqlalchemy import select

from sora2.api.db import Database
from sora2.api.jobs.models import Job
from sora2.api.providers.factory import create_provider
from sora2.settings import Settings
from tests.api.conftest import make_settings
from tests.api.harness import RunningApi, running_api, wait_for
from tests.api.test_ops import env_for
from tests.api.test_videos import balance, create
from tests.api.test_worker import until_status
from tests.fakes.fake_videos_api import FakeVideosAPI
from tests.fakes.servers import start_app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning"),
]
KEY = "sk-test-e2e-000000000000000000000000"


async def test_the_local_provider_renders_a_playable_clip_end_to_end(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    local = make_settings(
        database_url, tmp_path, api_embedded_worker=True, worker_provider_poll_ms=100
    )
    async with running_api(local, create_provider(local)) as api:
        token, _ = await api.register()
        _, video = await create(api, token, seconds=4, size="1280x720")
        done = await until_status(api, token, video["id"], "completed", "failed", timeout=90)
        assert done["status"] == "completed", done
        status, mp4, response = await api.request("GET", done["contentUrl"], token=token)
        assert status == 200
        assert len(mp4) == done["videoBytes"]
        assert response.headers["Accept-Ranges"] == "bytes"
        status, jpeg, _ = await api.request("GET", done["thumbnailUrl"], token=token)
        assert status == 200
        assert jpeg[:3] == b"\xff\xd8\xff"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(mp4)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        assert stream.codec_context.name == "h264"
        seconds = float(container.duration or 0) / av.time_base
        assert 3.5 <= seconds <= 4.5


def _start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", "worker"],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _job_row(settings: Settings, video_id: str) -> Any:
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            return (await session.execute(select(Job).where(Job.video_id == video_id))).scalar_one()
    finally:
        await database.dispose()


async def test_a_worker_killed_mid_job_is_taken_over_without_a_second_generation(
    api: RunningApi, settings: Settings
) -> None:
    fake = FakeVideosAPI(keys=[KEY], polls_to_complete=60)
    upstream = await start_app(fake.app())
    env = env_for(settings) | {
        "VIDEO_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"{upstream.url}/v1",
        "OPENAI_API_KEYS": KEY,
        "WORKER_LEASE_SECONDS": "1.5",
        "WORKER_PROVIDER_POLL_MS": "50",
        "WORKER_IDLE_POLL_MS": "50",
    }
    workers: list[subprocess.Popen[bytes]] = []
    try:
        token, _ = await api.register()
        _, video = await create(api, token)
        workers.append(_start_worker(env))

        async def generating() -> bool:
            body = (await api.request("GET", f"/api/videos/{video['id']}", token=token))[1]
            return bool(body["progress"] > 0)

        await wait_for(generating, timeout=30)
        workers[0].send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(workers[0].wait, 10) == -signal.SIGKILL
        first_owner = (await _job_row(settings, video["id"])).lease_owner
        assert first_owner is not None  # the dead worker's lease is still on the job

        workers.append(_start_worker(env))
        # A generous deadline: a new process on a busy 2-core machine takes seconds to import.
        done = await until_status(api, token, video["id"], "completed", "failed", timeout=90)
        assert done["status"] == "completed", done
        assert len(fake.creates) == 1  # resumed from the stored provider job id
        job = await _job_row(settings, video["id"])
        assert job.attempts == 2
        assert job.status == "done"
        assert await balance(api, token) == 96  # charged once, never refunded
        status, content, _ = await api.request("GET", done["contentUrl"], token=token)
        assert status == 200
        assert content == fake.video_bytes
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                # Waiting off the event loop: the in-process api must keep closing its sessions.
                await asyncio.to_thread(worker.wait, 20)
        await upstream.stop()
