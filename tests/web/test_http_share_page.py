"""`/s/{token}` over plain HTTP against a stand-in api: meta for unfurling, and every answer
other than a shared video (unknown, rate limited, api down) as a page, never a crash."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser

import aiohttp
import pytest
from aiohttp import web

from sora2.settings import load_settings
from sora2.web.app import create_app
from tests.fakes.servers import RunningServer, free_port, start_app

TOKEN = "T0k3n_" + "a" * 37
SHARED = {
    "prompt": 'A heron at dusk <script>alert(1)</script> & "quotes"',
    "model": "sora-2-pro",
    "seconds": 8,
    "size": "1792x1024",
    "createdAt": "2026-12-05T08:00:00Z",
    "contentUrl": f"/api/shared/{TOKEN}/content",
    "thumbnailUrl": f"/api/shared/{TOKEN}/thumbnail",
}


class _Meta(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        key = values.get("property") or values.get("name")
        if tag == "meta" and key and values.get("content") is not None:
            self.meta[key] = values["content"] or ""


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[RunningServer, list[str]]]:
    forwarded: list[str] = []

    async def shared(request: web.Request) -> web.Response:
        forwarded.append(request.headers.get("X-Forwarded-For", ""))
        token = request.match_info["token"]
        if token == TOKEN:
            return web.json_response(SHARED)
        if token.startswith("limited"):
            return web.json_response({"error": "Too Many Requests"}, status=429)
        return web.json_response({"error": "Not Found"}, status=404)

    app = web.Application()
    app.router.add_get("/api/shared/{token}", shared)
    server = await start_app(app)
    yield server, forwarded
    await server.stop()


async def web_for(api_url: str) -> RunningServer:
    settings = load_settings(api_url=api_url, app_env="test", frontend_url="https://sora2.example")
    return await start_app(create_app(settings))


async def test_a_shared_video_page_carries_its_meta_and_no_raw_html(
    fake_api: tuple[RunningServer, list[str]],
) -> None:
    api, forwarded = fake_api
    site = await web_for(api.url)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{site.url}/s/{TOKEN}") as response:
            assert response.status == 200
            html = await response.text()
    finally:
        await site.stop()
    parsed = _Meta()
    parsed.feed(html)
    base = f"https://sora2.example/api/proxy/shared/{TOKEN}"
    assert parsed.meta["og:video"] == f"{base}/content"
    assert parsed.meta["og:video:type"] == "video/mp4"
    assert parsed.meta["og:image"] == f"{base}/thumbnail"
    assert (parsed.meta["og:video:width"], parsed.meta["og:video:height"]) == ("1792", "1024")
    assert parsed.meta["og:url"] == f"https://sora2.example/s/{TOKEN}"
    assert parsed.meta["og:title"] == SHARED["prompt"]
    assert parsed.meta["twitter:card"] == "summary_large_image"
    assert parsed.meta["twitter:image"] == f"{base}/thumbnail"
    assert "<script>alert(1)</script>" not in html
    assert f'src="/api/proxy/shared/{TOKEN}/content"' in html
    assert forwarded == ["127.0.0.1"]  # the visitor's address, for the api's rate limit


@pytest.mark.parametrize(
    ("token", "status"),
    [("unknown-token-1234567890", 404), ("limited-1234567890abcdef", 429), ("bad!token", 404)],
)
async def test_other_answers_are_pages(
    fake_api: tuple[RunningServer, list[str]], token: str, status: int
) -> None:
    api, _ = fake_api
    site = await web_for(api.url)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{site.url}/s/{token}") as response:
            assert response.status == status
            assert response.content_type == "text/html"
    finally:
        await site.stop()


async def test_an_api_that_does_not_answer_is_a_503_page() -> None:
    site = await web_for(f"http://127.0.0.1:{free_port()}")
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{site.url}/s/{TOKEN}") as response:
            assert response.status == 503
            assert "cannot be shown right now" in await response.text()
    finally:
        await site.stop()


async def test_the_page_asks_the_next_api_when_one_is_down(
    fake_api: tuple[RunningServer, list[str]],
) -> None:
    api, _ = fake_api
    down = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(
        api_urls_list=f"{down},{api.url}", app_env="test", frontend_url="https://sora2.example"
    )
    site = await start_app(create_app(settings))
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{site.url}/s/{TOKEN}") as response:
            assert response.status == 200
            assert "sora-2-pro" in await response.text()
    finally:
        await site.stop()
