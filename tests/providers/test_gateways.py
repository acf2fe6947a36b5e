"""The `openai`-kind provider against three servers of the `/v1/videos` contract, on loopback:
OpenAI's own shapes, a LiteLLM-proxy-like gateway and a vLLM-Omni-like server; and the catalog's
providers behind one router, through the api and its worker."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sora2.api.providers.base import ErrorKind, GenerationRequest, ProviderError, ProviderJob
from sora2.api.providers.factory import ProviderRouter, create_provider
from sora2.api.providers.openai import OpenAIProvider
from sora2.catalog import load_catalog
from sora2.settings import load_settings
from tests.fakes.catalogs import gateway_catalog, write_catalog
from tests.fakes.fake_videos_api import (
    BLOCKED_AT_CREATE,
    BLOCKED_WHILE_RENDERING,
    FakeVideosAPI,
)
from tests.fakes.gateway_fakes import LITELLM, VLLM_OMNI, GatewayFake
from tests.fakes.servers import RunningServer, start_app

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")

KEYS = ["sk-gw-alpha-000000000000a1", "sk-gw-bravo-000000000000b2"]
PROMPT = "Lanterns drifting over a night market, handheld"
VEO = "gemini/veo-3.1-generate-preview"
WAN = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


@dataclass
class Gateway:
    name: str
    fake: Any  # FakeVideosAPI or GatewayFake: the same `calls`, `creates`, `video_bytes`
    upstream_model: str
    server: RunningServer

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"


def make_fake(name: str) -> tuple[Any, str]:
    if name == "openai":
        return FakeVideosAPI(keys=KEYS), "sora-2"
    if name == "litellm":
        return GatewayFake(LITELLM, KEYS, [VEO, "runwayml/gen4_turbo"]), VEO
    return GatewayFake(VLLM_OMNI, KEYS, [WAN]), WAN


@pytest.fixture(params=["openai", "litellm", "vllm-omni"])
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    fake, model = make_fake(request.param)
    server = await start_app(fake.app())
    yield Gateway(request.param, fake, model, server)
    await server.stop()


@pytest.fixture
async def provider(gateway: Gateway) -> AsyncIterator[OpenAIProvider]:
    made = OpenAIProvider(
        api_keys=KEYS, base_url=gateway.base_url, timeout_seconds=5, name=gateway.name
    )
    yield made
    await made.close()


def request_for(gateway: Gateway, prompt: str = PROMPT) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, model=gateway.upstream_model, seconds=8, size="1280x720"
    )


async def poll_until_final(provider: OpenAIProvider, job_id: str) -> list[ProviderJob]:
    seen = [await provider.status(job_id)]
    for _ in range(50):  # the fakes advance one step per poll: no clock involved
        if seen[-1].status in ("completed", "failed"):
            return seen
        seen.append(await provider.status(job_id))
    raise AssertionError(f"{job_id} never finished: {seen[-1]}")


async def expect_error(call: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await call
    return caught.value


async def test_a_video_is_made_followed_and_copied_with_a_jpeg_thumbnail(
    gateway: Gateway, provider: OpenAIProvider, tmp_path: Path
) -> None:
    job_id = await provider.start(request_for(gateway))

    [create] = gateway.fake.creates
    assert create.content_type == "multipart/form-data"
    assert {k: create.form[k] for k in ("prompt", "model", "seconds", "size")} == {
        "prompt": PROMPT,
        "model": gateway.upstream_model,
        "seconds": "8",
        "size": "1280x720",
    }
    jobs = await poll_until_final(provider, job_id)
    # `processing` (LiteLLM) reads as in progress; a missing progress reads as 0.
    assert [job.status for job in jobs] == ["in_progress", "in_progress", "completed"]
    assert [job.progress for job in jobs] == sorted(job.progress for job in jobs)
    assert jobs[-1].progress == 100

    for attempt in ("first", "second"):
        video, thumbnail = tmp_path / attempt / "v.mp4", tmp_path / attempt / "t.jpg"
        await provider.download(job_id, video, thumbnail)
        assert video.read_bytes() == gateway.fake.video_bytes
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG"
    thumbnail_asks = [c for c in gateway.fake.calls if c.variant == "thumbnail"]
    # A server answering the thumbnail variant with the MP4 is asked once, then a frame is taken.
    assert len(thumbnail_asks) == (2 if gateway.name == "openai" else 1)


async def test_a_failed_generation_carries_the_providers_reason(
    gateway: Gateway, provider: OpenAIProvider
) -> None:
    job_id = await provider.start(request_for(gateway, f"a scene {BLOCKED_WHILE_RENDERING}"))

    final = (await poll_until_final(provider, job_id))[-1]

    assert final.status == "failed"
    expected_code = {
        "openai": "moderation_blocked",
        "litellm": "generation_failed",  # an error with a message and no code
        "vllm-omni": "http_500",  # a code that is a bare number
    }[gateway.name]
    assert final.error_code == expected_code
    assert final.error_message in (
        "The generated video did not pass moderation.",
        "The generated video was blocked by the safety filter.",
    )


async def test_a_refused_create_is_final_with_the_servers_own_words(
    gateway: Gateway, provider: OpenAIProvider
) -> None:
    error = await expect_error(provider.start(request_for(gateway, f"x {BLOCKED_AT_CREATE}")))

    assert error.kind is ErrorKind.FINAL
    assert error.code in ("moderation_blocked", "http_400")
    assert "refused" in error.message or "moderation" in error.message
    assert gateway.fake.creates == []


async def test_an_unknown_video_is_not_found_whatever_the_error_shape(
    gateway: Gateway, provider: OpenAIProvider, tmp_path: Path
) -> None:
    status_error = await expect_error(provider.status("video_nope"))
    download_error = await expect_error(
        provider.download("video_nope", tmp_path / "v.mp4", tmp_path / "t.jpg")
    )

    assert status_error.kind is download_error.kind is ErrorKind.NOT_FOUND
    assert "not found" in status_error.message.lower()
    assert list(tmp_path.iterdir()) == []


async def test_cancel_deletes_upstream(gateway: Gateway, provider: OpenAIProvider) -> None:
    job_id = await provider.start(request_for(gateway))

    await provider.cancel(job_id)
    await provider.cancel(job_id)  # gone already: fine

    assert job_id not in gateway.fake.videos


async def test_a_refused_key_is_set_aside_where_the_server_checks_keys(
    gateway: Gateway, tmp_path: Path
) -> None:
    provider = OpenAIProvider(
        api_keys=["sk-not-a-key-00000000000000", KEYS[0]], base_url=gateway.base_url
    )
    try:
        for _ in range(3):
            await provider.start(request_for(gateway))
        pool = provider.health()["keyPool"]
    finally:
        await provider.close()

    checks_keys = gateway.name != "vllm-omni"  # started without --api-key
    assert pool["disabled"] == (1 if checks_keys else 0)
    assert len(gateway.fake.creates) == 3


# --- providers by name: the catalog's router ------------------------------------------------


@pytest.fixture
async def two_gateways() -> AsyncIterator[tuple[Gateway, Gateway]]:
    litellm_fake, veo = make_fake("litellm")
    vllm_fake, wan = make_fake("vllm-omni")
    litellm_server = await start_app(litellm_fake.app())
    vllm_server = await start_app(vllm_fake.app())
    yield (
        Gateway("litellm", litellm_fake, veo, litellm_server),
        Gateway("vllm-omni", vllm_fake, wan, vllm_server),
    )
    await litellm_server.stop()
    await vllm_server.stop()


def two_provider_catalog(folder: Path, litellm: Gateway, vllm: Gateway) -> Path:
    return write_catalog(
        folder,
        gateway_catalog(litellm.base_url)
        + f"""
[providers.gpu]
kind = "openai"
base_url = "{vllm.base_url}"
api_keys_env = "GPU_KEYS"

[[models]]
id = "wan-2.2"
name = "Wan 2.2 (our GPU)"
provider = "gpu"
upstream_model = "{WAN}"
seconds = [4, 5]
sizes = ["832x480", "480x832"]
credits_per_second = 1
""",
    )


ENVIRON = {"GATEWAY_KEYS": ",".join(KEYS), "GPU_KEYS": "sk-unused-by-vllm-0000001"}


async def test_each_model_goes_to_its_provider_with_its_upstream_name(
    two_gateways: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    litellm, vllm = two_gateways
    settings = load_settings(
        app_env="test",
        data_dir=tmp_path,
        models_file=two_provider_catalog(tmp_path, litellm, vllm),
    )
    router = create_provider(settings, load_catalog(settings, ENVIRON))
    assert isinstance(router, ProviderRouter)
    try:
        veo_job = await router.start(GenerationRequest(PROMPT, "veo-3.1", 6, "720x1280"))
        wan_job = await router.start(GenerationRequest(PROMPT, "wan-2.2", 5, "832x480"))

        assert veo_job.startswith("gateway/video_")
        assert wan_job.startswith("gpu/video_gen_")
        assert litellm.fake.creates[0].form["model"] == VEO
        assert vllm.fake.creates[0].form["model"] == WAN
        assert litellm.fake.creates[0].key in KEYS
        for job_id in (veo_job, wan_job):
            job = await router.status(job_id)
            while job.status != "completed":
                job = await router.status(job_id)
            assert job.id == job_id
            await router.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
        health = router.health()
        assert health["status"] == "ok"
        assert set(health["providers"]) == {"gateway", "gpu", "local"}
        assert KEYS[0] not in repr(health)
        withdrawn = await expect_error(router.start(GenerationRequest(PROMPT, "gone", 4, "1x1")))
        assert withdrawn.kind is ErrorKind.FINAL
    finally:
        await router.close()


async def test_sora2_models_lists_the_catalog_and_asks_each_provider(
    two_gateways: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    litellm, vllm = two_gateways
    path = two_provider_catalog(tmp_path, litellm, vllm)

    async def sora2_models(**env: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sora2",
            "models",
            cwd=tmp_path,
            env=_env(MODELS_FILE=str(path), **env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        return int(process.returncode or 0), out.decode()

    code, out = await sora2_models(**ENVIRON)
    assert code == 0, out
    for shown in ("veo-3.1", "Veo 3.1", "4/6/8 s", "wan-2.2", "local-draft"):
        assert shown in out
    lines = {line.split()[0]: line for line in out.splitlines()[-6:] if line.strip()}
    for provider in ("gateway", "gpu", "local"):
        assert " ok " in lines[provider]
    assert not [line for line in out.splitlines() if "WARN" in line]

    code, out = await sora2_models(GATEWAY_KEYS="sk-wrong-key-0000000000", GPU_KEYS="x")
    assert code == 1
    assert "refuses the first key of GATEWAY_KEYS (HTTP 401)" in out
    assert "sk-wrong" not in out
    await litellm.server.stop()
    code, out = await sora2_models(**ENVIRON)
    assert code == 1
    assert "does not answer at " + litellm.base_url + "/models" in out


def _env(**extra: str) -> dict[str, str]:
    import os

    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MODELS_", "GATEWAY", "GPU"))}
    return keep | {"APP_ENV": "test"} | extra


async def test_a_user_gets_a_veo_video_through_a_gateway_named_in_designs_catalog(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN's catalog file, its base URL aimed at the fake: the api, the worker, the router."""
    from sora2.api.context import media_storage
    from sora2.api.db import Database
    from sora2.api.db.migrate import upgrade
    from sora2.api.jobs.worker import Worker
    from tests.api.conftest import make_settings
    from tests.api.harness import running_api, wait_for

    if gateway.name == "openai":
        gateway.fake.valid_keys.add(KEYS[0])
    monkeypatch.setenv("GATEWAY_KEYS", KEYS[0])
    catalog = gateway_catalog(gateway.base_url).replace(VEO, gateway.upstream_model)
    settings = make_settings(
        f"sqlite:///{tmp_path / 'api.db'}",
        tmp_path,
        models_file=write_catalog(tmp_path, catalog),
    )
    database = Database(settings.resolved_database_url)
    await upgrade(database)
    provider = create_provider(settings)
    worker = Worker(
        settings=settings, database=database, storage=media_storage(settings), provider=provider
    )
    try:
        async with running_api(settings, provider) as api, worker.running():
            token, _ = await api.register()
            status, video, _ = await api.request(
                "POST",
                "/api/videos",
                token=token,
                json={"prompt": PROMPT, "model": "veo-3.1", "seconds": 8, "size": "720x1280"},
            )
            assert status == 202, video
            assert video["cost"] == 16

            async def completed() -> bool:
                _, body, _ = await api.request("GET", f"/api/videos/{video['id']}", token=token)
                assert body["status"] not in ("failed", "cancelled"), body
                return bool(body["status"] == "completed")

            await wait_for(completed, timeout=20)
            _, content, _ = await api.request(
                "GET", f"/api/videos/{video['id']}/content", token=token
            )
            _, thumbnail, _ = await api.request(
                "GET", f"/api/videos/{video['id']}/thumbnail", token=token
            )
    finally:
        await provider.close()
        await database.dispose()

    assert content == gateway.fake.video_bytes
    assert thumbnail[:3] == b"\xff\xd8\xff"
    [create] = gateway.fake.creates
    assert (create.form["model"], create.form["seconds"], create.form["size"]) == (
        gateway.upstream_model,
        "8",
        "720x1280",
    )


# --- image-to-video and remix upstream ------------------------------------------------------


async def test_an_image_goes_upstream_as_a_multipart_input_reference(
    gateway: Gateway, provider: OpenAIProvider
) -> None:
    import dataclasses
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (128, 72), (30, 200, 60)).save(buffer, "JPEG")
    picture = buffer.getvalue()

    job_id = await provider.start(
        dataclasses.replace(request_for(gateway), input_reference=picture)
    )

    [create] = gateway.fake.creates
    assert create.content_type == "multipart/form-data"
    assert "input_reference" in create.form
    if isinstance(gateway.fake, GatewayFake):
        sent = gateway.fake.references[job_id]
        assert (sent.filename, sent.content_type, sent.data) == (
            "reference.jpg",
            "image/jpeg",
            picture,
        )


async def test_a_remix_is_asked_of_the_source_video_upstream(
    gateway: Gateway, provider: OpenAIProvider
) -> None:
    import dataclasses

    from sora2.api.providers.base import RemixSource

    source = await provider.start(request_for(gateway))
    await poll_until_final(provider, source)
    remix = dataclasses.replace(
        request_for(gateway, "the same market in the rain"), remix=RemixSource(source, PROMPT)
    )

    if gateway.name == "vllm-omni":  # no remix route at all
        error = await expect_error(provider.start(remix))
        assert error.kind is ErrorKind.NOT_FOUND
        return
    if gateway.name == "litellm":  # Veo through LiteLLM refuses remixes
        error = await expect_error(provider.start(remix))
        assert error.message == "Video remix is not supported by Google Veo."
        return
    job_id = await provider.start(remix)

    [call] = [c for c in gateway.fake.calls if c.path.endswith("/remix")]
    assert call.path == f"/v1/videos/{source}/remix"
    assert call.form == {"prompt": "the same market in the rain"}
    assert gateway.fake.videos[job_id].remixed_from == source
    assert (await poll_until_final(provider, job_id))[-1].status == "completed"


async def test_a_create_answered_without_an_id_is_final_and_not_asked_again() -> None:
    from aiohttp import web

    creates: list[str] = []

    async def create(request: web.Request) -> web.Response:
        creates.append(request.path)
        return web.json_response({"object": "video", "status": "queued"})

    async def retrieve(_request: web.Request) -> web.Response:
        return web.Response(text="<html>gateway error page</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/v1/videos", create)
    app.router.add_get("/v1/videos/{video_id}", retrieve)
    server = await start_app(app)
    provider = OpenAIProvider(api_keys=KEYS, base_url=f"{server.url}/v1", timeout_seconds=5)
    try:
        made = await expect_error(provider.start(request_for_model("any")))
        status = await expect_error(provider.status("video_1"))
    finally:
        await provider.close()
        await server.stop()

    # A 200 without an id may still be a paid generation: never retried into a second one.
    assert (made.kind, made.code) == (ErrorKind.FINAL, "invalid_response")
    assert creates == ["/v1/videos"]
    # An unreadable status answer is only a bad moment: asked again later.
    assert (status.kind, status.code) == (ErrorKind.TRANSIENT, "invalid_response")


def request_for_model(model: str) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, model=model, seconds=4, size="1280x720")
