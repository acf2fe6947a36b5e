"""Image-to-video through the api: a multipart create with `input_reference`, decoded safely,
fitted to the video's size, kept with the video; bad images refused with nothing charged or kept."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from sora2.settings import Settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, running_api
from tests.fakes.catalogs import LOCAL_ONLY_CATALOG, write_catalog

PROMPT = "The kite lifts off the beach"


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bands(
    size: tuple[int, int], colours: list[tuple[int, int, int]], *, mode: str = "RGB"
) -> Image.Image:
    """Vertical bands of colour, left to right, in equal widths."""
    image = Image.new("RGB", size)
    step = size[0] // len(colours)
    for n, colour in enumerate(colours):
        image.paste(colour, (n * step, 0, (n + 1) * step, size[1]))
    return image.convert(mode) if mode != "RGB" else image


def form(image: bytes | None, filename: str = "photo.png", **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in ({"prompt": PROMPT, "model": "veo-3.1"} | fields).items():
        data.add_field(name, value)
    if image is not None:
        data.add_field("input_reference", image, filename=filename, content_type="image/png")
    return data


async def create(
    api: RunningApi, token: str, image: bytes | None, **fields: str
) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": fields.pop("key")} if "key" in fields else {}
    status, body, _ = await api.request(
        "POST", "/api/videos", token=token, data=form(image, **fields), headers=headers
    )
    return status, body


async def reference_of(api: RunningApi, token: str, video: dict[str, Any]) -> Image.Image:
    status, body, response = await api.request("GET", video["inputReferenceUrl"], token=token)
    assert status == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    return Image.open(io.BytesIO(body))


def close(pixel: Any, colour: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


async def balance(api: RunningApi, token: str) -> int:
    _, body, _ = await api.request("GET", "/api/credits/balance", token=token)
    return int(body["balance"])


def stored_references(api: RunningApi) -> list[Path]:
    root = api.settings.data_dir / "media" / "references"
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 60), (30, 60, 220), (255, 255, 255)


async def test_an_image_is_cover_cropped_around_its_centre_to_the_videos_size(
    catalog_api: RunningApi,
) -> None:
    token, _ = await catalog_api.register()
    wide = encoded(bands((400, 100), [RED, GREEN, GREEN, BLUE]), "PNG")

    status, video = await create(catalog_api, token, wide, seconds="6", size="1280x720")

    assert status == 202, video
    assert video["cost"] == 12
    assert video["inputReferenceUrl"] == f"/api/videos/{video['id']}/input_reference"
    fitted = await reference_of(catalog_api, token, video)
    assert fitted.format == "JPEG"
    assert fitted.size == (1280, 720)
    # 4:1 scaled to cover 16:9 keeps the middle: the red and blue ends are cropped away.
    for x in (5, 640, 1274):
        assert close(fitted.getpixel((x, 360)), GREEN), x
    _, got, _ = await catalog_api.request("GET", f"/api/videos/{video['id']}", token=token)
    assert got["inputReferenceUrl"] == video["inputReferenceUrl"]


async def test_exif_orientation_alpha_cmyk_and_webp_are_made_plain_rgb(
    catalog_api: RunningApi,
) -> None:
    token, _ = await catalog_api.register()
    # Stored sideways (left red, right blue) with EXIF "rotate 90° clockwise to display":
    # upright it is red on top, blue below.
    sideways = bands((200, 100), [RED, BLUE])
    exif = Image.Exif()
    exif[0x0112] = 6
    portrait = encoded(sideways, "JPEG", exif=exif, quality=95)
    clear = encoded(Image.new("RGBA", (160, 90), (0, 0, 0, 0)), "PNG")
    cmyk = encoded(Image.new("RGB", (160, 90), GREEN).convert("CMYK"), "JPEG", quality=95)
    webp = encoded(Image.new("RGB", (160, 90), BLUE), "WEBP", quality=95)

    _, upright = await create(catalog_api, token, portrait, size="720x1280")
    image = await reference_of(catalog_api, token, upright)
    assert image.size == (720, 1280)
    assert close(image.getpixel((360, 100)), RED)
    assert close(image.getpixel((360, 1180)), BLUE)
    for data, colour in ((clear, WHITE), (cmyk, GREEN), (webp, BLUE)):
        status, video = await create(catalog_api, token, data)
        assert status == 202, video
        assert close((await reference_of(catalog_api, token, video)).getpixel((640, 360)), colour)


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("text", 415, "not a JPEG, PNG or WebP"),
        ("gif", 415, "not a JPEG, PNG or WebP"),
        ("truncated", 422, "damaged or truncated"),
        ("bomb", 422, "the limit is 40 megapixels"),
        ("too_big", 413, "the limit is"),
        ("empty", 422, "empty"),
    ],
)
async def test_a_bad_image_is_refused_naming_the_problem_and_nothing_is_charged_or_kept(
    catalog_api: RunningApi, case: str, status: int, words: str
) -> None:
    token, _ = await catalog_api.register()
    photo = encoded(bands((320, 180), [RED, BLUE]), "PNG")
    data = {
        "text": b"this is not an image at all",
        "gif": encoded(Image.new("RGB", (32, 32), RED), "GIF"),
        "truncated": photo[: len(photo) // 2],
        # 50 megapixels declared, a few kilobytes on disk: refused from the header, never decoded.
        "bomb": encoded(Image.new("1", (10_000, 5_000)), "PNG"),
        "too_big": photo + b"\x00" * (11 * 1024 * 1024),
        "empty": b"",
    }[case]

    got, body = await create(catalog_api, token, data)

    assert got == status, body
    assert words in body["message"]
    assert body["details"]["field"] == "input_reference"
    assert await balance(catalog_api, token) == 100
    _, videos, _ = await catalog_api.request("GET", "/api/videos", token=token)
    assert videos["total"] == 0
    assert stored_references(catalog_api) == []


async def test_a_model_without_image_input_refuses_an_image(
    settings: Settings, tmp_path: Path, provider: ScriptedProvider
) -> None:
    words_only = LOCAL_ONLY_CATALOG.replace("image_input = true", "image_input = false", 1)
    path = write_catalog(tmp_path, words_only)
    photo = encoded(bands((320, 180), [RED, BLUE]), "PNG")
    async with running_api(settings.model_copy(update={"models_file": path}), provider) as api:
        token, _ = await api.register()

        status, body = await create(api, token, photo, model="veo-3.1")

        assert status == 422
        assert body["message"] == (
            "Invalid request: input_reference: veo-3.1 does not start from an image; send no "
            "input_reference, or choose local-draft."
        )
        assert body["details"]["fields"][0]["field"] == "input_reference"
        assert await balance(api, token) == 100
        assert stored_references(api) == []


async def test_multipart_fields_are_checked_like_json_ones(catalog_api: RunningApi) -> None:
    token, _ = await catalog_api.register()
    photo = encoded(bands((320, 180), [RED, BLUE]), "PNG")

    status, body = await create(catalog_api, token, photo, seconds="5")
    assert status == 422
    assert "veo-3.1 makes 4, 6 or 8 s videos" in body["message"]
    status, body = await create(catalog_api, token, None, prompt="   ")
    assert status == 422
    assert body["details"]["fields"][0]["field"] == "prompt"
    status, text_only = await create(catalog_api, token, None)
    assert status == 202
    assert text_only["inputReferenceUrl"] is None
    status, body, _ = await catalog_api.request(
        "GET", f"/api/videos/{text_only['id']}/input_reference", token=token
    )
    assert status == 404
    assert "did not start from an image" in body["message"]


async def test_a_repeated_multipart_create_with_its_key_is_charged_once(
    catalog_api: RunningApi,
) -> None:
    token, _ = await catalog_api.register()
    photo = encoded(bands((320, 180), [RED, BLUE]), "PNG")
    other = encoded(bands((320, 180), [BLUE, RED]), "PNG")

    first = await create(catalog_api, token, photo, key="kite-1")
    again = await create(catalog_api, token, photo, key="kite-1")
    changed = await create(catalog_api, token, other, key="kite-1")

    assert first[0] == again[0] == 202
    assert again[1]["id"] == first[1]["id"]
    assert changed[0] == 422
    assert await balance(catalog_api, token) == 100 - 8
    assert len(stored_references(catalog_api)) == 1


async def test_deleting_a_video_deletes_its_image(catalog_api: RunningApi) -> None:
    token, _ = await catalog_api.register()
    photo = encoded(bands((320, 180), [RED, BLUE]), "PNG")
    _, video = await create(catalog_api, token, photo)
    [stored] = stored_references(catalog_api)
    digest = hashlib.sha256(stored.read_bytes()).hexdigest()
    _, served, _ = await catalog_api.request("GET", video["inputReferenceUrl"], token=token)
    assert hashlib.sha256(served).hexdigest() == digest

    status, _, _ = await catalog_api.request("DELETE", f"/api/videos/{video['id']}", token=token)

    assert status == 204
    assert stored_references(catalog_api) == []


@pytest.mark.slow
async def test_the_local_renderer_opens_on_the_image_and_so_does_its_remix(
    database_url: str, tmp_path: Path
) -> None:
    from sora2.api.providers.factory import create_provider
    from tests.api.conftest import make_settings
    from tests.api.harness import running_api
    from tests.api.test_worker import until_status
    from tests.fakes.catalogs import LOCAL_ONLY_CATALOG, write_catalog

    settings = make_settings(
        database_url,
        tmp_path,
        api_embedded_worker=True,
        worker_provider_poll_ms=100,
        models_file=write_catalog(tmp_path, LOCAL_ONLY_CATALOG),
    )
    photo = encoded(bands((640, 360), [GREEN, GREEN, GREEN]), "PNG")
    async with running_api(settings, create_provider(settings)) as api:
        token, _ = await api.register()
        status, video = await create(api, token, photo, model="local-draft", seconds="2")
        assert status == 202, video
        done = await until_status(api, token, video["id"], "completed", "failed", timeout=90)
        assert done["status"] == "completed", done
        # Remixed through the real router and renderer: it opens on the source's image again.
        status, remixed, _ = await api.request(
            "POST", f"/api/videos/{video['id']}/remix", token=token, json={"prompt": "at night"}
        )
        assert status == 202, remixed
        again = await until_status(api, token, remixed["id"], "completed", "failed", timeout=90)
        assert again["status"] == "completed", again
        thumbnails = [
            (await api.request("GET", item["thumbnailUrl"], token=token))[1]
            for item in (done, again)
        ]
    for jpeg in thumbnails:
        thumbnail = Image.open(io.BytesIO(jpeg))
        # The picture fills the frame (no gradient): its corners are the image's green.
        width, height = thumbnail.size
        for corner in ((4, 4), (width - 5, 4), (4, height - 12), (width - 5, height - 12)):
            assert close(thumbnail.getpixel(corner), GREEN, tolerance=40), corner
