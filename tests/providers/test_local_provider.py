"""The local provider renders real, playable MP4s, reports progress, stops, and survives crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from sora2.api.providers.base import (
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderJob,
)
from sora2.api.providers.local import JobFolder, LocalProvider, spec_from_request
from sora2.api.providers.render import THUMBNAIL_AT
from sora2.settings import load_settings
from tests.debian import CHROMIUM_ARGS
from tests.fakes.servers import serving

DEADLINE_SECONDS = 60.0


def request(
    size: str = "320x180", seconds: int = 4, prompt: str = "a red fox in snow"
) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, model="sora-2", seconds=seconds, size=size)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    local = LocalProvider(tmp_path / "local-provider")
    yield local
    await local.close()


async def wait_until_final(provider: LocalProvider, job_id: str) -> list[ProviderJob]:
    """Poll like the worker does; every answer seen, the final one last."""
    seen: list[ProviderJob] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        job = await provider.status(job_id)
        seen.append(job)
        if job.status in ("completed", "failed"):
            return seen
        await asyncio.sleep(0.01)
    raise AssertionError(f"{job_id} not final after {DEADLINE_SECONDS}s; last {seen[-1]}")


async def wait_until_started(provider: LocalProvider, job_id: str) -> ProviderJob:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        job = await provider.status(job_id)
        if job.progress > 0:
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"{job_id} never made progress")


def decoded_frames(video: Path) -> tuple[av.video.stream.VideoStream, float, list[np.ndarray]]:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert container.duration is not None
        duration = container.duration / av.time_base
        return stream, duration, frames


async def test_renders_a_browser_playable_h264_mp4_of_the_exact_size_and_length(
    provider: LocalProvider, tmp_path: Path
) -> None:
    job_id = await provider.start(request("1280x720", 4))
    assert (await wait_until_final(provider, job_id))[-1].status == "completed"
    video, thumbnail = tmp_path / "out" / "v.mp4", tmp_path / "out" / "t.jpg"
    await provider.download(job_id, video, thumbnail)

    stream, duration, frames = decoded_frames(video)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert (stream.width, stream.height) == (1280, 720)
    assert abs(duration - 4.0) <= 1 / 24
    assert len(frames) == 4 * 24
    assert all(frame.shape == (720, 1280, 3) for frame in frames)
    # It moves: the start, middle and end all look different.
    first, middle, last = frames[0], frames[len(frames) // 2], frames[-1]
    assert np.abs(first.astype(int) - middle).mean() > 2
    assert np.abs(middle.astype(int) - last).mean() > 2
    # faststart: the index comes before the media, so a browser can play while downloading.
    head = video.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")

    with Image.open(thumbnail) as image:
        assert image.format == "JPEG"
        assert abs(image.width / image.height - 16 / 9) < 0.01
        # It shows the clip: the frame it was taken from, scaled down, looks the same.
        shown = frames[int(len(frames) * THUMBNAIL_AT)]
        scaled = Image.fromarray(shown).resize(image.size, Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(scaled)).mean() < 6


async def test_portrait_clip_and_thumbnail_keep_their_orientation(
    provider: LocalProvider, tmp_path: Path
) -> None:
    job_id = await provider.start(request("180x320", 4))
    await wait_until_final(provider, job_id)
    await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
    stream, duration, _ = decoded_frames(tmp_path / "v.mp4")
    assert (stream.width, stream.height) == (180, 320)
    assert abs(duration - 4.0) <= 1 / 24
    with Image.open(tmp_path / "t.jpg") as image:
        assert abs(image.width / image.height - 9 / 16) < 0.02


async def test_progress_rises_without_going_back_and_ends_at_100(
    provider: LocalProvider,
) -> None:
    job_id = await provider.start(request("320x180", 12))
    seen = await wait_until_final(provider, job_id)
    progress = [job.progress for job in seen]
    assert progress == sorted(progress)
    assert seen[-1].status == "completed"
    assert progress[-1] == 100
    assert any(0 < value < 100 for value in progress), progress
    assert {job.status for job in seen} <= {"queued", "in_progress", "completed"}


async def test_cancel_stops_the_render_and_can_be_repeated(
    provider: LocalProvider, tmp_path: Path
) -> None:
    job_id = await provider.start(request("1280x720", 12))
    await wait_until_started(provider, job_id)

    await provider.cancel(job_id)

    folder = JobFolder(tmp_path / "local-provider" / job_id)
    assert not folder.is_being_rendered()
    stopped_at = (await provider.status(job_id)).progress
    job = await provider.status(job_id)
    assert (job.status, job.error_code) == ("failed", "cancelled")
    assert job.progress == stopped_at < 100
    assert not folder.video.exists()
    assert not folder.partial_video.exists()
    assert provider.health()["running"] == 0
    await provider.cancel(job_id)  # again: nothing to do, no error
    with pytest.raises(ProviderError) as error:
        await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
    assert error.value.kind is ErrorKind.FINAL
    assert not (tmp_path / "v.mp4").exists()


async def test_a_fresh_provider_finishes_a_job_another_one_stopped(tmp_path: Path) -> None:
    root = tmp_path / "local-provider"
    first = LocalProvider(root)
    job_id = await first.start(request("640x360", 8))
    reached = (await wait_until_started(first, job_id)).progress
    await first.close()  # the api shuts down mid-render

    second = LocalProvider(root)
    try:
        seen = await wait_until_final(second, job_id)
        assert seen[-1].status == "completed"
        assert all(job.progress >= reached for job in seen)
        await second.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
        assert decoded_frames(tmp_path / "v.mp4")[1] == pytest.approx(8.0, abs=1 / 24)
    finally:
        await second.close()


STARTER = """
import asyncio, sys, time
from pathlib import Path
from sora2.api.providers.base import GenerationRequest
from sora2.api.providers.local import LocalProvider

async def main():
    provider = LocalProvider(Path(sys.argv[1]))
    job_id = await provider.start(GenerationRequest("crash test", "sora-2", 12, "640x360"))
    while (await provider.status(job_id)).progress == 0:
        await asyncio.sleep(0.01)
    print(job_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_new_process_rerenders_a_job_whose_worker_and_renderer_were_killed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "local-provider"
    worker = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        job_id = worker.stdout.readline().strip()
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    folder = JobFolder(root / job_id)
    renderer = folder.renderer_pid()
    assert renderer is not None
    os.kill(renderer, signal.SIGKILL)  # the whole machine went down: no renderer survives
    deadline = time.monotonic() + DEADLINE_SECONDS
    while folder.is_being_rendered() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)

    fresh = LocalProvider(root)
    try:
        seen = await wait_until_final(fresh, job_id)
        assert seen[-1].status == "completed"
        assert folder.renderer_pid() != renderer
    finally:
        await fresh.close()


@pytest.mark.parametrize("job_id", ["local-" + "0" * 32, "video_123", "../../etc/passwd", ""])
async def test_unknown_ids_are_not_found_and_cancel_ignores_them(
    provider: LocalProvider, tmp_path: Path, job_id: str
) -> None:
    with pytest.raises(ProviderError) as error:
        await provider.status(job_id)
    assert error.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(ProviderError) as error:
        await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
    assert error.value.kind is ErrorKind.NOT_FOUND
    await provider.cancel(job_id)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (request(size="321x180"), "size"),
        (request(size="huge"), "size"),
        (request(seconds=0), "seconds"),
        (request(prompt="   "), "prompt"),
    ],
)
async def test_requests_it_cannot_render_are_final_errors_naming_the_field(
    provider: LocalProvider, bad: GenerationRequest, named: str
) -> None:
    with pytest.raises(ProviderError) as error:
        await provider.start(bad)
    assert error.value.kind is ErrorKind.FINAL
    assert error.value.code == "invalid_request"
    assert named in error.value.message


async def test_download_before_completion_is_a_retryable_error(
    provider: LocalProvider, tmp_path: Path
) -> None:
    job_id = await provider.start(request("640x360", 12))
    with pytest.raises(ProviderError) as error:
        await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")
    assert error.value.kind is ErrorKind.TRANSIENT
    await provider.cancel(job_id)


async def test_from_settings_works_under_the_data_dir(tmp_path: Path) -> None:
    provider = LocalProvider.from_settings(load_settings(DATA_DIR=str(tmp_path)))
    try:
        job_id = await provider.start(request())
        assert (await wait_until_final(provider, job_id))[-1].status == "completed"
        assert (tmp_path / "local-provider" / job_id / "video.mp4").is_file()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while provider.health()["running"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the render process exits just after its files land
        assert provider.health() == {
            "provider": "local",
            "status": "ok",
            "running": 0,
            "queued": 0,
            "maxParallel": provider.max_parallel,
        }
    finally:
        await provider.close()


async def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def test_a_cancel_from_another_process_stops_the_render_where_it_runs(
    tmp_path: Path,
) -> None:
    root = tmp_path / "local-provider"
    rendering, other = LocalProvider(root), LocalProvider(root)
    try:
        job_id = await rendering.start(request("1280x720", 12))
        await wait_until_started(rendering, job_id)

        await other.cancel(job_id)

        await wait_for(lambda: rendering.health()["running"] == 0, "the render process ended")
        job = await rendering.status(job_id)
        assert (job.status, job.error_code) == ("failed", "cancelled")
        assert not JobFolder(root / job_id).video.exists()
    finally:
        await rendering.close()
        await other.close()


async def wait_for_new_renderer(
    provider: LocalProvider, job_id: str, folder: JobFolder, old: set[int]
) -> int:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        await provider.status(job_id)  # the poll that notices a dead render and restarts it
        pid = folder.renderer_pid()
        if pid is not None and pid not in old and folder.is_being_rendered():
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError("no new renderer took the job")


async def test_a_render_that_keeps_dying_fails_instead_of_looping(
    provider: LocalProvider, tmp_path: Path
) -> None:
    job_id = await provider.start(request("1280x720", 12))
    folder = JobFolder(tmp_path / "local-provider" / job_id)
    killed: set[int] = set()
    for _ in range(3):
        pid = await wait_for_new_renderer(provider, job_id, folder, killed)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        await wait_for(lambda: not folder.is_being_rendered(), "the renderer died")

    job = (await wait_until_final(provider, job_id))[-1]
    assert (job.status, job.error_code) == ("failed", "render_crashed")
    assert "3 times" in (job.error_message or "")


async def test_finished_jobs_are_swept_after_retention_but_downloads_survive(
    tmp_path: Path,
) -> None:
    root = tmp_path / "local-provider"
    provider = LocalProvider(root, retention_seconds=0)
    try:
        finished = await provider.start(request())
        await wait_until_final(provider, finished)
        await provider.download(finished, tmp_path / "v.mp4", tmp_path / "t.jpg")

        running = await provider.start(request("1280x720", 12))  # sweeps on the way

        await wait_for(lambda: not (root / finished).exists(), "the finished job was swept")
        with pytest.raises(ProviderError) as error:
            await provider.status(finished)
        assert error.value.kind is ErrorKind.NOT_FOUND
        assert (await provider.status(running)).status in ("queued", "in_progress")
        assert decoded_frames(tmp_path / "v.mp4")[1] == pytest.approx(4.0, abs=1 / 24)
    finally:
        await provider.close()


PLAY_HALF_A_SECOND = """() => new Promise((resolve) => {
  const video = document.getElementById("video");
  const report = () => resolve({width: video.videoWidth, height: video.videoHeight,
    duration: video.duration, time: video.currentTime, error: video.error && video.error.message});
  video.addEventListener("error", report);
  video.addEventListener("timeupdate", () => { if (video.currentTime >= 0.5) report(); });
  video.play().catch((error) => resolve({error: String(error)}));
})"""


@pytest.mark.browser
async def test_chromium_plays_the_video_and_shows_the_thumbnail(
    provider: LocalProvider, tmp_path: Path, chromium_executable: Path
) -> None:
    from playwright.async_api import async_playwright

    job_id = await provider.start(request("320x180", 4))
    await wait_until_final(provider, job_id)
    await provider.download(job_id, tmp_path / "v.mp4", tmp_path / "t.jpg")

    async def page(_: web.Request) -> web.Response:
        html = '<video id="video" muted src="/v.mp4"></video><img id="thumb" src="/t.jpg">'
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_static("/", tmp_path)  # FileResponse: Range requests, as the api serves them
    async with serving(app) as server, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium_executable), args=CHROMIUM_ARGS
        )
        try:
            tab = await browser.new_page()
            await tab.goto(server.url + "/")
            played = await tab.evaluate(PLAY_HALF_A_SECOND)
            thumb_width = await tab.evaluate(
                "async () => { const img = document.getElementById('thumb');"
                " await img.decode(); return img.naturalWidth; }"
            )
        finally:
            await browser.close()
    assert played["error"] is None
    assert (played["width"], played["height"]) == (320, 180)
    assert played["duration"] == pytest.approx(4.0, abs=1 / 24)
    assert played["time"] >= 0.5
    assert thumb_width == 320


async def test_a_renderer_error_fails_the_job_with_a_message_free_of_server_paths(
    tmp_path: Path,
) -> None:
    root = tmp_path / "local-provider"
    # A job left by a process that died before rendering, whose renderer cannot write its output:
    # a directory sits where the file must go.
    job_id = f"local-{uuid.uuid4().hex}"
    folder = JobFolder(root / job_id)
    folder.create(spec_from_request(request()))
    folder.partial_video.mkdir()

    provider = LocalProvider(root)
    try:
        job = (await wait_until_final(provider, job_id))[-1]
    finally:
        await provider.close()
    assert (job.status, job.error_code) == ("failed", "render_failed")
    assert str(tmp_path) not in (job.error_message or "")
    assert "IsADirectoryError" in folder.log_file.read_text()


async def test_providers_in_different_processes_share_the_render_slots(tmp_path: Path) -> None:
    root = tmp_path / "local-provider"
    first, second = LocalProvider(root, max_parallel=1), LocalProvider(root, max_parallel=1)
    try:
        busy = await first.start(request("1280x720", 12))
        await wait_until_started(first, busy)
        waiting = await second.start(request())
        waiting_folder = JobFolder(root / waiting)

        # Its render process is up and holds the job, but the one slot is taken: it waits.
        await wait_for(waiting_folder.is_being_rendered, "the second render process started")
        assert (await second.status(waiting)).status == "queued"
        assert (await first.status(busy)).status == "in_progress"

        await first.cancel(busy)  # frees the slot
        assert (await wait_until_final(second, waiting))[-1].status == "completed"
    finally:
        await first.close()
        await second.close()


def _picture(size: tuple[int, int]) -> bytes:
    """Green with a red left edge: where the clip looks, and how it moves, is easy to tell."""
    import io

    image = Image.new("RGB", size, (30, 200, 60))
    image.paste((220, 30, 30), (0, 0, size[0] // 6, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


async def test_a_clip_from_an_image_opens_on_it_and_slowly_zooms_in(
    provider: LocalProvider, tmp_path: Path
) -> None:
    from dataclasses import replace

    start = replace(
        request("320x180", 2, "a kite over the dunes"), input_reference=_picture((320, 180))
    )
    job_id = await provider.start(start)
    assert (await wait_until_final(provider, job_id))[-1].status == "completed"
    video, thumbnail = tmp_path / "v.mp4", tmp_path / "t.jpg"
    await provider.download(job_id, video, thumbnail)

    _, _, frames = decoded_frames(video)
    first, last = frames[0], frames[-1]
    # The first frame is the picture: red on the left edge, green in the middle of the top row.
    assert first[8, 4, 0] > 180
    assert first[8, 4, 1] < 90
    assert first[8, 160, 1] > 160
    # By the end it has zoomed in: the red edge is narrower (or gone), the picture is still there.
    red_columns = lambda frame: int((frame[8, :, 0] > 150).sum())  # noqa: E731
    assert red_columns(last) < red_columns(first)
    assert last[8, 160, 1] > 160


async def test_a_local_remix_keeps_the_sources_colours_and_picture_with_new_words(
    provider: LocalProvider, tmp_path: Path
) -> None:
    from dataclasses import replace

    from sora2.api.providers.base import RemixSource
    from sora2.api.providers.render import palette_for

    source_request = request("320x180", 2, "a lighthouse at dusk")
    source = await provider.start(source_request)
    remix = await provider.start(
        replace(
            request("320x180", 2, "the same lighthouse in a storm"),
            remix=RemixSource(job_id=source, prompt=source_request.prompt),
        )
    )
    spec = (provider.root / remix / "spec.json").read_text()
    assert '"palette_prompt": "a lighthouse at dusk"' in spec
    assert palette_for("a lighthouse at dusk") != palette_for("the same lighthouse in a storm")
    for job in (source, remix):
        assert (await wait_until_final(provider, job))[-1].status == "completed"
    await provider.download(source, tmp_path / "s.mp4", tmp_path / "s.jpg")
    await provider.download(remix, tmp_path / "r.mp4", tmp_path / "r.jpg")
    source_frame = decoded_frames(tmp_path / "s.mp4")[2][0]
    remix_frame = decoded_frames(tmp_path / "r.mp4")[2][0]
    # The same background colours (the corners hold no text), other words in the middle.
    corner = (slice(150, 170), slice(290, 315))
    assert np.abs(source_frame[corner].astype(int) - remix_frame[corner]).mean() < 6
    gone = await expect_final(provider.start(replace(source_request, remix=RemixSource("", ""))))
    assert gone.code == "remix_source_unavailable"


async def expect_final(call: object) -> ProviderError:
    assert asyncio.iscoroutine(call)
    with pytest.raises(ProviderError) as caught:
        await call
    return caught.value
