"""The `openai` provider against a fake Videos API on loopback, through the real SDK and sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING

import av
import httpx2
import pytest
from PIL import Image

from sora2.api.providers.base import (
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderJob,
    VideoProvider,
)
from sora2.api.providers.keys import KeyPool
from sora2.api.providers.openai import OpenAIProvider, retry_after_seconds
from sora2.settings import SettingsError, load_settings
from tests.fakes.fake_videos_api import (
    BLOCKED_AT_CREATE,
    BLOCKED_WHILE_RENDERING,
    THUMBNAIL_SIZE,
    FakeVideosAPI,
    RateLimit,
)
from tests.fakes.servers import RunningServer, free_port, start_app

if TYPE_CHECKING:
    from tests.api.harness import RunningApi

ALPHA = "sk-proj-alpha-5fa1c0ffee0000000000000000a1"
BRAVO = "sk-proj-bravo-77b2deadbeef00000000000000b2"
CHARLIE = "sk-proj-charlie-99c3facade000000000000000c3"
KEYS = [ALPHA, BRAVO, CHARLIE]
PROMPT = "A lighthouse keeper's cat watching the storm roll in, slow dolly shot"
REQUEST = GenerationRequest(prompt=PROMPT, model="sora-2-pro", seconds=8, size="1280x720")

# The SDK flags the Videos API as deprecated (OpenAI's own service closed); the provider silences
# it at import, but pytest resets warning filters for every test.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")


@pytest.fixture
def fake() -> FakeVideosAPI:
    return FakeVideosAPI(keys=KEYS)


@pytest.fixture
async def server(fake: FakeVideosAPI) -> AsyncIterator[RunningServer]:
    running = await start_app(fake.app())
    yield running
    await running.stop()


ProviderFactory = Callable[..., OpenAIProvider]


@pytest.fixture
async def make_provider(server: RunningServer) -> AsyncIterator[ProviderFactory]:
    made: list[OpenAIProvider] = []

    def make(keys: list[str] = KEYS, *, base_url: str | None = None, timeout: float = 5.0):
        provider = OpenAIProvider(
            api_keys=keys, base_url=base_url or f"{server.url}/v1", timeout_seconds=timeout
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture
def provider(make_provider: ProviderFactory) -> OpenAIProvider:
    return make_provider()


async def poll_until_final(provider: OpenAIProvider, job_id: str) -> list[ProviderJob]:
    seen = [await provider.status(job_id)]
    for _ in range(50):  # the fake advances one step per poll: no clock involved
        if seen[-1].status in ("completed", "failed"):
            return seen
        seen.append(await provider.status(job_id))
    raise AssertionError(f"job {job_id} never finished: {seen[-1]}")


async def expect_error(call: object) -> ProviderError:
    assert asyncio.iscoroutine(call)
    with pytest.raises(ProviderError) as caught:
        await call
    return caught.value


# --- the lifecycle ---


async def test_a_video_is_created_once_polled_to_completion_and_copied_intact(
    provider: OpenAIProvider, fake: FakeVideosAPI, tmp_path: Path
) -> None:
    job_id = await provider.start(REQUEST)

    [create] = fake.creates
    assert create.video_id is None
    assert job_id in fake.videos
    assert create.content_type == "multipart/form-data"
    assert create.form == {
        "prompt": PROMPT,
        "model": "sora-2-pro",
        "seconds": "8",
        "size": "1280x720",
    }

    jobs = await poll_until_final(provider, job_id)
    assert [job.status for job in jobs] == ["in_progress", "in_progress", "completed"]
    progress = [job.progress for job in jobs]
    assert progress == sorted(progress)
    assert progress[-1] == 100

    video, thumbnail = tmp_path / "out" / "video.mp4", tmp_path / "out" / "thumb.jpg"
    await provider.download(job_id, video, thumbnail)

    assert hashlib.sha256(video.read_bytes()).digest() == hashlib.sha256(fake.video_bytes).digest()
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    with Image.open(thumbnail) as image:
        # The API serves a WebP thumbnail; the interface promises a JPEG of the same picture.
        assert image.format == "JPEG"
        assert image.size == THUMBNAIL_SIZE
    assert sorted(path.name for path in video.parent.iterdir()) == ["thumb.jpg", "video.mp4"]
    assert [call.variant for call in fake.calls_to("GET") if call.path.endswith("/content")] == [
        "video",
        "thumbnail",
    ]
    assert len(fake.creates) == 1


async def test_a_server_without_thumbnails_still_yields_a_jpeg_from_the_first_frame(
    provider: OpenAIProvider, fake: FakeVideosAPI, tmp_path: Path
) -> None:
    fake.serve_thumbnails = False
    job_id = await provider.start(REQUEST)
    await poll_until_final(provider, job_id)

    await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")

    with Image.open(tmp_path / "t.jpg") as image:
        assert image.format == "JPEG"
        assert image.size == (64, 48)


async def test_a_download_cut_short_is_transient_and_leaves_no_file(
    provider: OpenAIProvider, fake: FakeVideosAPI, tmp_path: Path
) -> None:
    job_id = await provider.start(REQUEST)
    await poll_until_final(provider, job_id)
    fake.truncate_downloads = True

    error = await expect_error(provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg"))

    assert error.kind is ErrorKind.TRANSIENT
    assert error.code == "download_interrupted"
    assert list(tmp_path.iterdir()) == []
    fake.truncate_downloads = False
    await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
    assert (tmp_path / "v.mp4").read_bytes() == fake.video_bytes


async def test_cancel_deletes_the_job_upstream_and_unknown_ids_are_fine(
    provider: OpenAIProvider, fake: FakeVideosAPI
) -> None:
    job_id = await provider.start(REQUEST)

    await provider.cancel(job_id)
    await provider.cancel(job_id)  # already gone: not an error
    await provider.cancel("video_never_existed")

    assert [call.video_id for call in fake.calls_to("DELETE")] == [job_id] * 2 + [
        "video_never_existed"
    ]
    error = await expect_error(provider.status(job_id))
    assert error.kind is ErrorKind.NOT_FOUND


# --- failures the provider reports ---


async def test_a_prompt_refused_by_moderation_at_create_is_final_with_the_providers_code(
    provider: OpenAIProvider, fake: FakeVideosAPI
) -> None:
    request = GenerationRequest(f"a scene {BLOCKED_AT_CREATE}", "sora-2", 4, "720x1280")

    error = await expect_error(provider.start(request))

    assert error.kind is ErrorKind.FINAL
    assert error.code == "moderation_blocked"
    assert "moderation" in error.message
    assert fake.creates == []
    assert len(fake.calls_to("POST")) == 1


async def test_a_video_failing_moderation_while_rendering_carries_the_reason(
    provider: OpenAIProvider,
) -> None:
    request = GenerationRequest(f"a scene {BLOCKED_WHILE_RENDERING}", "sora-2", 4, "720x1280")
    job_id = await provider.start(request)

    final = (await poll_until_final(provider, job_id))[-1]

    assert final.status == "failed"
    assert final.error_code == "moderation_blocked"
    assert final.error_message == "The generated video did not pass moderation."


async def test_an_invalid_request_is_final_and_names_the_field(provider: OpenAIProvider) -> None:
    error = await expect_error(provider.start(GenerationRequest("x", "sora-2", 5, "1280x720")))

    assert error.kind is ErrorKind.FINAL
    assert error.code == "invalid_value"
    assert "seconds" in error.message


async def test_an_unknown_job_id_is_not_found(provider: OpenAIProvider, tmp_path: Path) -> None:
    status_error = await expect_error(provider.status("video_nope"))
    download_error = await expect_error(
        provider.download("video_nope", tmp_path / "v.mp4", tmp_path / "t.jpg")
    )

    assert status_error.kind is download_error.kind is ErrorKind.NOT_FOUND
    assert status_error.code == "video_not_found"
    assert list(tmp_path.iterdir()) == []


async def test_a_refused_connection_is_transient(make_provider: ProviderFactory) -> None:
    closed = make_provider(base_url=f"http://127.0.0.1:{free_port()}/v1")

    error = await expect_error(closed.start(REQUEST))

    assert error.kind is ErrorKind.TRANSIENT
    assert error.code == "connection_error"
    assert closed.health()["keyPool"]["usable"] == len(KEYS)  # the keys were not to blame


async def test_a_silent_server_times_out_as_transient(
    make_provider: ProviderFactory, fake: FakeVideosAPI
) -> None:
    fake.stall_seconds = 2.0
    impatient = make_provider(timeout=0.2)
    started = time.monotonic()

    error = await expect_error(impatient.status("video_000001"))

    assert error.kind is ErrorKind.TRANSIENT
    assert error.code == "timeout"
    assert time.monotonic() - started < 1.5


async def test_server_errors_are_transient_with_retry_after_and_not_retried_by_the_sdk(
    provider: OpenAIProvider, fake: FakeVideosAPI
) -> None:
    fake.server_errors_left, fake.server_error_status = 1, 503
    fake.server_error_retry_after = "7"

    error = await expect_error(provider.start(REQUEST))

    assert error.kind is ErrorKind.TRANSIENT
    assert error.retry_after == 7.0
    assert len(fake.calls) == 1  # one request: the worker, not the SDK, decides on retries
    assert await provider.start(REQUEST)
    assert len(fake.creates) == 1


# --- the key pool ---


async def test_keys_take_turns(provider: OpenAIProvider, fake: FakeVideosAPI) -> None:
    for _ in range(6):
        await provider.start(REQUEST)

    assert [call.key for call in fake.creates] == KEYS * 2


async def test_a_rate_limited_key_rests_while_the_others_carry_on(
    provider: OpenAIProvider, fake: FakeVideosAPI
) -> None:
    fake.rate_limited[ALPHA] = RateLimit(retry_after="30")

    for _ in range(4):
        await provider.start(REQUEST)

    assert len(fake.creates) == 4
    assert {call.key for call in fake.creates} == {BRAVO, CHARLIE}
    assert fake.keys_used().count(ALPHA) == 1  # asked once, then left to rest
    alpha = provider.health()["keyPool"]["keys"][0]
    assert alpha["state"] == "resting"
    assert 28 <= alpha["restingForSeconds"] <= 30


async def test_when_every_key_rests_calls_wait_for_the_first_to_wake(
    make_provider: ProviderFactory, fake: FakeVideosAPI
) -> None:
    provider = make_provider([ALPHA, BRAVO])
    fake.rate_limited[ALPHA] = RateLimit(retry_after="20")
    fake.rate_limited[BRAVO] = RateLimit(retry_after=None, retry_after_ms="400")

    error = await expect_error(provider.start(REQUEST))

    assert error.kind is ErrorKind.RATE_LIMITED
    assert error.code == "all_keys_resting"
    assert error.retry_after is not None
    assert 0.2 < error.retry_after <= 0.4
    assert provider.health()["status"] == "rate_limited"
    again = await expect_error(provider.status("video_000001"))
    assert again.code == "all_keys_resting"
    assert len(fake.calls) == 2  # resting keys are not even asked

    del fake.rate_limited[BRAVO]
    deadline = time.monotonic() + 3
    job_id = None
    while job_id is None:  # what the worker does: wait as told, then ask again
        try:
            job_id = await provider.start(REQUEST)
        except ProviderError as waiting:
            if waiting.code != "all_keys_resting" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(waiting.retry_after or 0.05)
    assert fake.creates[-1].key == BRAVO
    assert job_id in fake.videos


async def test_a_job_started_with_one_key_is_followed_with_any_healthy_key(
    provider: OpenAIProvider, fake: FakeVideosAPI, tmp_path: Path
) -> None:
    job_id = await provider.start(REQUEST)
    assert fake.creates[0].key == ALPHA
    fake.revoked.add(ALPHA)

    await poll_until_final(provider, job_id)
    await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")

    assert (tmp_path / "v.mp4").read_bytes() == fake.video_bytes


async def test_a_revoked_key_is_disabled_and_shows_in_health(
    provider: OpenAIProvider, fake: FakeVideosAPI
) -> None:
    fake.revoked.add(BRAVO)
    fake.forbidden.add(CHARLIE)

    for _ in range(4):
        await provider.start(REQUEST)

    assert [call.key for call in fake.creates] == [ALPHA] * 4
    assert fake.keys_used().count(BRAVO) == fake.keys_used().count(CHARLIE) == 1
    health = provider.health()
    assert health["status"] == "ok"
    pool = health["keyPool"]
    assert (pool["usable"], pool["disabled"]) == (1, 2)
    assert [(key["key"], key["state"], key.get("reason")) for key in pool["keys"]] == [
        ("#1 sk-…00a1", "ok", None),
        ("#2 sk-…00b2", "disabled", "401 invalid_api_key"),
        ("#3 sk-…00c3", "disabled", "403 unsupported_country_region_territory"),
    ]


async def test_when_every_key_is_refused_the_call_is_final(
    provider: OpenAIProvider, fake: FakeVideosAPI
) -> None:
    fake.revoked.update(KEYS)

    error = await expect_error(provider.start(REQUEST))
    again = await expect_error(provider.status("video_000001"))

    assert error.kind is again.kind is ErrorKind.FINAL
    assert error.code == "no_usable_key"
    assert "OPENAI_API_KEYS" in error.message
    assert len(fake.calls) == len(KEYS)  # each key asked once, none again
    assert provider.health()["status"] == "no_usable_key"


async def test_no_key_or_prompt_reaches_logs_errors_or_health(
    make_provider: ProviderFactory, fake: FakeVideosAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    fake.revoked.add(ALPHA)  # its 401 body quotes the whole key back
    fake.rate_limited[BRAVO] = RateLimit()
    errors: list[ProviderError] = []

    job_id = await provider.start(REQUEST)
    fake.revoked.add(CHARLIE)
    errors.append(await expect_error(provider.status(job_id)))
    errors.append(await expect_error(provider.start(REQUEST)))

    exposed = [record.getMessage() for record in caplog.records]
    exposed += [str(error) for error in errors] + [json.dumps(provider.health())]
    assert any("rate limited" in line for line in exposed)  # the logs did speak
    for secret in [*KEYS, PROMPT]:
        assert not [line for line in exposed if secret in line]
    assert repr(provider.health()).count("sk-…") == len(KEYS)


# --- the pool on its own clock, and settings ---


def test_a_key_rate_limited_without_retry_after_backs_off_exponentially() -> None:
    now = [1000.0]
    pool = KeyPool([ALPHA], clock=lambda: now[0])

    rests = []
    for _ in range(8):
        rests.append(pool.rate_limited(pool.acquire(), retry_after=None))
        now[0] += rests[-1]
    assert rests == [1, 2, 4, 8, 16, 32, 60, 60]

    pool.succeeded(pool.acquire())
    assert pool.rate_limited(pool.acquire(), retry_after=None) == 1
    with pytest.raises(ProviderError) as caught:
        pool.acquire()
    assert caught.value.retry_after == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # OpenAI's precise header wins
        ({"retry-after": "9"}, 9.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_as_the_provider_sends_it(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_seconds(httpx2.Headers(headers)) == expected


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    in_a_minute = formatdate(time.time() + 60, usegmt=True)

    wait = retry_after_seconds(httpx2.Headers({"retry-after": in_a_minute}))

    assert wait is not None
    assert 55 <= wait <= 60


@pytest.mark.parametrize("retry_after", [1e11, 1e20])
def test_a_huge_retry_after_rests_the_key_no_longer_than_the_cap(retry_after: float) -> None:
    """Seen in the fault soak: `Retry-After: 1e11` rested a worker's only key for ever, so
    every start, poll and upstream stop of that process was refused until its videos failed."""
    now = [0.0]
    pool = KeyPool([ALPHA], clock=lambda: now[0], max_rest_seconds=2.0)

    assert pool.rate_limited(pool.acquire(), retry_after=retry_after) == 2.0
    now[0] = 2.0
    pool.acquire()  # awake again


def test_calls_in_flight_together_on_a_limited_key_double_its_backoff_once() -> None:
    pool = KeyPool([ALPHA], clock=lambda: 50.0)
    in_flight = [pool.acquire(), pool.acquire(), pool.acquire()]

    rests = [pool.rate_limited(lease, retry_after=None) for lease in in_flight]

    assert rests == [1, 1, 1]
    assert pool.health()["keys"][0]["rateLimits"] == 3


def test_a_key_out_of_quota_rests_for_minutes() -> None:
    pool = KeyPool([ALPHA, BRAVO], clock=lambda: 0.0)

    rest = pool.rate_limited(pool.acquire(), retry_after=None, out_of_quota=True)

    assert rest == 300
    assert pool.acquire().label.endswith("00b2")


def test_duplicate_and_blank_keys_are_ignored_and_an_empty_pool_is_refused() -> None:
    assert len(KeyPool([ALPHA, " ", ALPHA, BRAVO])) == 2
    with pytest.raises(ValueError, match="OPENAI_API_KEYS"):
        KeyPool([" "])


async def test_the_provider_is_configured_from_settings(
    server: RunningServer, fake: FakeVideosAPI
) -> None:
    settings = load_settings(
        openai_api_keys=f"{ALPHA}, {BRAVO}",
        openai_base_url=f"{server.url}/v1/",
        openai_timeout_ms=2000,
    )
    provider: VideoProvider = OpenAIProvider.from_settings(settings)  # mypy checks the fit
    try:
        await provider.start(REQUEST)
        assert provider.health()["keyPool"]["total"] == 2
        assert provider.health()["baseUrl"] == f"{server.url}/v1"
    finally:
        await provider.close()
    assert fake.creates[0].key == ALPHA

    with pytest.raises(ValueError, match="OPENAI_API_KEYS"):
        OpenAIProvider.from_settings(load_settings(openai_api_keys=""))


def test_choosing_openai_without_a_key_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEYS", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(SettingsError, match="set OPENAI_API_KEYS"):
        load_settings(video_provider="openai")


# --- through the api and its worker, as a user meets it ---


@asynccontextmanager
async def api_and_worker_on_openai(
    tmp_path: Path, server: RunningServer
) -> AsyncIterator[tuple[RunningApi, OpenAIProvider]]:
    """The real api (SQLite) and one worker, with `VIDEO_PROVIDER=openai` aimed at the fake."""
    # Imported here: the provider tests above must not pay for the whole api.
    from sora2.api.context import media_storage
    from sora2.api.db import Database
    from sora2.api.db.migrate import upgrade
    from sora2.api.jobs.worker import Worker
    from tests.api.conftest import make_settings
    from tests.api.harness import running_api

    settings = make_settings(
        f"sqlite:///{tmp_path / 'api.db'}",
        tmp_path,
        video_provider="openai",
        openai_api_keys=",".join(KEYS),
        openai_base_url=f"{server.url}/v1",
    )
    database = Database(settings.resolved_database_url)
    try:
        await upgrade(database)
        provider = OpenAIProvider.from_settings(settings)
        worker = Worker(
            settings=settings,
            database=database,
            storage=media_storage(settings),
            provider=provider,
        )
        async with running_api(settings, provider) as api, worker.running():
            yield api, provider
        await provider.close()
    finally:
        await database.dispose()


async def video_status(api: RunningApi, token: str, video_id: str) -> str:
    status, body, _ = await api.request("GET", f"/api/videos/{video_id}", token=token)
    assert status == 200
    return str(body["status"])


async def test_a_user_gets_the_providers_video_through_the_api(
    tmp_path: Path, server: RunningServer, fake: FakeVideosAPI
) -> None:
    from tests.api.harness import wait_for

    async with api_and_worker_on_openai(tmp_path, server) as (api, _):
        token, _ = await api.register()
        status, video, _ = await api.request(
            "POST", "/api/videos", token=token, json={"prompt": PROMPT, "seconds": 4}
        )
        assert status == 202, video

        async def completed() -> bool:
            return await video_status(api, token, video["id"]) == "completed"

        await wait_for(completed, timeout=15)
        _, content, response = await api.request(
            "GET", f"/api/videos/{video['id']}/content", token=token
        )
        _, thumbnail, thumbnail_response = await api.request(
            "GET", f"/api/videos/{video['id']}/thumbnail", token=token
        )
        _, health, _ = await api.request("GET", "/api/health")

    assert content == fake.video_bytes
    assert response.headers["Content-Type"] == "video/mp4"
    assert thumbnail_response.headers["Content-Type"] == "image/jpeg"
    assert thumbnail[:3] == b"\xff\xd8\xff"
    assert len(fake.creates) == 1
    assert fake.creates[0].form["prompt"] == PROMPT
    assert health["status"] == "ok"
    pool = health["checks"]["provider"]["keyPool"]
    assert pool["usable"] == len(KEYS)
    assert not [key for key in KEYS if key in json.dumps(health)]


async def test_a_video_waits_while_every_key_rests_then_completes(
    tmp_path: Path, server: RunningServer, fake: FakeVideosAPI
) -> None:
    from tests.api.harness import wait_for

    for key in KEYS:
        fake.rate_limited[key] = RateLimit(retry_after=None, retry_after_ms="100")
    async with api_and_worker_on_openai(tmp_path, server) as (api, _):
        token, _ = await api.register()
        _, video, _ = await api.request("POST", "/api/videos", token=token, json={"prompt": PROMPT})

        async def many_waits() -> bool:
            assert await video_status(api, token, video["id"]) != "failed"
            # Each round asks every key once: more rounds than the worker has attempts.
            return len(fake.calls) > 8 * len(KEYS)

        await wait_for(many_waits, timeout=5)
        fake.rate_limited.clear()

        async def completed() -> bool:
            return await video_status(api, token, video["id"]) == "completed"

        await wait_for(completed, timeout=10)
    assert len(fake.creates) == 1


async def test_health_is_degraded_while_every_key_rests(
    tmp_path: Path, server: RunningServer, fake: FakeVideosAPI
) -> None:
    from tests.api.harness import wait_for

    for key in KEYS:
        fake.rate_limited[key] = RateLimit(retry_after="30")
    async with api_and_worker_on_openai(tmp_path, server) as (api, _):
        token, _ = await api.register()
        await api.request("POST", "/api/videos", token=token, json={"prompt": PROMPT})

        async def every_key_refused() -> bool:
            return {call.key for call in fake.calls if call.status == 429} == set(KEYS)

        await wait_for(every_key_refused, timeout=10)
        _, health, _ = await api.request("GET", "/api/health")

    # Requests are still served, but the api says videos are stalled, and why.
    assert health["status"] == "degraded"
    assert health["checks"]["provider"]["status"] == "rate_limited"
