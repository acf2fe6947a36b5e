"""The pages, static files and security headers over plain HTTP (no browser)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from sora2.settings import load_settings
from sora2.web.app import create_app
from sora2.web.pages import PAGES, STATIC_DIR
from tests.fakes.backend import BackendState, create_backend
from tests.fakes.servers import RunningServer, free_port, start_app

PAGE_PATHS = [*PAGES, "/videos/3f2c9a"]
_IMPORT = re.compile(r"""^\s*import\s[^"']*["'](\.{1,2}/[^"']+)["']""", re.MULTILINE)


class _Tags(HTMLParser):
    """Collects what a CSP would block or allow: scripts, styles, inline handlers, links."""

    def __init__(self) -> None:
        super().__init__()
        self.script_sources: list[str | None] = []
        self.stylesheets: list[str] = []
        self.inline_attributes: list[str] = []
        self.style_elements = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.script_sources.append(values.get("src"))
        if tag == "style":
            self.style_elements += 1
        if tag == "link" and values.get("rel") == "stylesheet" and values.get("href"):
            self.stylesheets.append(values["href"] or "")
        self.inline_attributes += [
            name for name, _ in attrs if name.startswith("on") or name == "style"
        ]


@pytest.fixture
async def web() -> AsyncIterator[RunningServer]:
    # The api is not running: page routes must not depend on it.
    settings = load_settings(api_url=f"http://127.0.0.1:{free_port()}", app_env="test")
    server = await start_app(create_app(settings))
    yield server
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize("path", PAGE_PATHS)
async def test_every_page_renders_with_a_strict_csp_and_no_inline_code(
    web: RunningServer, client: aiohttp.ClientSession, path: str
) -> None:
    async with client.get(web.url + path) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        html = await response.text()
        csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    tags = _Tags()
    tags.feed(html)
    assert tags.script_sources, "every page loads its module"
    assert all(source for source in tags.script_sources), "no inline <script>"
    assert tags.style_elements == 0
    assert tags.inline_attributes == []
    assert '<main id="main"' in html
    assert 'id="connection-banner"' in html


async def test_pages_load_only_assets_that_exist_with_the_right_types(
    web: RunningServer, client: aiohttp.ClientSession
) -> None:
    """Every stylesheet, page module and module they import answers 200 with its real type."""
    to_fetch: set[str] = set()
    for path in PAGE_PATHS:
        async with client.get(web.url + path) as response:
            tags = _Tags()
            tags.feed(await response.text())
        to_fetch.update(source.split("?")[0] for source in tags.script_sources if source)
        to_fetch.update(href.split("?")[0] for href in tags.stylesheets)
    seen: set[str] = set()
    while to_fetch:
        url = to_fetch.pop()
        seen.add(url)
        async with client.get(web.url + url) as response:
            assert response.status == 200, url
            body = await response.text()
            expected = "text/css" if url.endswith(".css") else "text/javascript"
            assert response.content_type == expected, url
            assert "Content-Security-Policy" in response.headers
        for relative in _IMPORT.findall(body) if url.endswith(".js") else []:
            resolved = str(Path(url).parent.joinpath(relative).resolve())
            if resolved not in seen:
                to_fetch.add(resolved)
    assert "/static/js/api.js" in seen
    assert "/static/js/connection.js" in seen


async def test_no_script_touches_storage_for_tokens_or_writes_html() -> None:
    """The session lives in HttpOnly cookies only; user text goes in as text, never markup."""
    for script in STATIC_DIR.rglob("*.js"):
        source = script.read_text()
        assert "localStorage" not in source, script
        assert "document.cookie" not in source, script
        assert "innerHTML" not in source, script
        assert "insertAdjacentHTML" not in source, script


async def test_unknown_pages_get_a_helpful_404_with_the_path_escaped(
    web: RunningServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(web.url + "/nowhere%3Cscript%3Ealert(1)%3C%2Fscript%3E") as response:
        assert response.status == 404
        assert response.content_type == "text/html"
        html = await response.text()
        assert "Content-Security-Policy" in response.headers
    assert "Page not found" in html
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("video_id", ["a.b", "x" * 65, "%3Cb%3E"])
async def test_a_video_page_for_an_impossible_id_is_a_404(
    web: RunningServer, client: aiohttp.ClientSession, video_id: str
) -> None:
    async with client.get(f"{web.url}/videos/{video_id}") as response:
        assert response.status == 404
        assert "Page not found" in await response.text()


async def test_the_video_page_hands_its_id_to_the_script(
    web: RunningServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(web.url + "/videos/9b1d-77_x") as response:
        assert 'data-video-id="9b1d-77_x"' in await response.text()


@pytest.mark.parametrize(
    "path", ["/static/%2e%2e/pages.py", "/static/..%2fpages.py", "/static/js/nope.js", "/static/"]
)
async def test_static_never_serves_outside_its_folder(
    web: RunningServer, client: aiohttp.ClientSession, path: str
) -> None:
    async with client.get(web.url + path) as response:
        assert response.status == 404
        assert "def add_pages" not in await response.text()


async def test_static_files_are_revalidated_cheaply(
    web: RunningServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(web.url + "/static/app.css") as response:
        assert response.headers["Cache-Control"] == "no-cache"
        modified = response.headers["Last-Modified"]
    async with client.get(
        web.url + "/static/app.css", headers={"If-Modified-Since": modified}
    ) as response:
        assert response.status == 304


async def test_the_page_offers_what_the_api_accepts(
    web: RunningServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(web.url + "/generate") as response:
        html = await response.text()
    for value in ("sora-2-pro", "1792x1024", 'value="12"', 'maxlength="2000"'):
        assert value in html


async def test_proxied_answers_pass_through_without_page_headers() -> None:
    """The backend's responses are its own: the page CSP is not stamped onto them."""
    backend = await start_app(create_backend())
    web = await start_app(create_app(load_settings(api_url=backend.url, app_env="test")))
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(web.url + "/api/proxy/echo/x") as response,
        ):
            assert response.status == 200
            assert "Content-Security-Policy" not in response.headers
            async with client.get(web.url + "/api/proxy/missing") as missing:
                assert missing.status == 404
                assert missing.content_type != "text/html"
    finally:
        await web.stop()
        await backend.stop()


async def test_the_proxy_reads_through_any_api_of_api_urls_that_is_up() -> None:
    """API_URLS: reads keep working while one of the apis is down."""
    state = BackendState()
    backend = await start_app(create_backend(state))
    down = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(api_urls_list=f"{down},{backend.url}", app_env="test")
    web = await start_app(create_app(settings))
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(6):
                async with client.get(web.url + "/api/proxy/count/read") as response:
                    assert response.status == 200
            async with client.get(web.url + "/metrics") as response:
                metrics = await response.text()
    finally:
        await web.stop()
        await backend.stop()
    assert state.count("read") == 6
    assert f'sora2_proxy_backend_attempts_total{{backend="{down}",outcome="refused"}}' in metrics


async def test_health_and_metrics_still_answer(
    web: RunningServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(web.url + "/healthz") as response:
        assert (await response.json())["status"] == "ok"
    async with client.get(web.url + "/metrics") as response:
        assert response.status == 200


async def test_prices_and_the_welcome_gift_come_from_the_settings_the_api_uses(
    client: aiohttp.ClientSession,
) -> None:
    settings = load_settings(
        api_url=f"http://127.0.0.1:{free_port()}",
        app_env="test",
        video_prices={"sora-2": 2, "sora-2-pro": 5},
        signup_credits=250,
    )
    server = await start_app(create_app(settings))
    try:
        async with client.get(server.url + "/") as response:
            landing = await response.text()
        async with client.get(server.url + "/pricing") as response:
            assert response.status == 200
            html = await response.text()
    finally:
        await server.stop()
    assert "start with 250 free credits" in landing
    assert "start with 250 free credits" in html
    # sora-2-pro at 5 credits a second: 20, 40 and 60 for 4, 8 and 12 seconds.
    row = html[html.index('data-model="sora-2-pro"') :].split("</tr>")[0]
    assert "<td data-per-second>5</td>" in row
    assert [int(n) for n in re.findall(r"(\d+) credits</li>", row)] == [20, 40, 60]


async def test_pricing_follows_the_catalog_file_and_needs_no_provider_key(
    client: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.catalogs import DESIGN_CATALOG, write_catalog

    monkeypatch.delenv("GATEWAY_KEYS", raising=False)
    settings = load_settings(
        api_url=f"http://127.0.0.1:{free_port()}",
        app_env="test",
        models_file=write_catalog(tmp_path, DESIGN_CATALOG),
    )
    server = await start_app(create_app(settings))
    try:
        async with client.get(server.url + "/pricing") as response:
            html = await response.text()
    finally:
        await server.stop()
    row = html[html.index('data-model="veo-3.1"') :].split("</tr>")[0]
    assert "Veo 3.1" in row
    assert "<td data-per-second>2</td>" in row
    assert [int(n) for n in re.findall(r"(\d+) credits</li>", row)] == [8, 12, 16]
    assert "starts from an image" in row
    for hidden in ("127.0.0.1:4000", "gemini/veo", "GATEWAY_KEYS"):
        assert hidden not in html
