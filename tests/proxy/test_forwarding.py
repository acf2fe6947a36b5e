"""Forwarding: every method, the query, headers and bodies arrive intact; answers pass through."""

from __future__ import annotations

import hashlib
import os

import aiohttp
import pytest
from yarl import URL

from tests.fakes.backend import BackendState
from tests.fakes.servers import RunningServer
from tests.proxy.conftest import MakeProxy


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_reaches_the_backend_with_query_and_body(
    method: str, backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    body = os.urandom(3000) if method not in ("GET", "OPTIONS") else b""
    url = URL(proxy.url + "/echo/a%2Fb/c?x=1&y=%20two&x=3", encoded=True)
    async with client.request(method, url, data=body) as response:
        assert response.status == 200
        echoed = await response.json()
    assert echoed["method"] == method
    assert echoed["path"] == "/api/echo/a%2Fb/c"
    assert echoed["query"] == "x=1&y= two&x=3"
    assert echoed["length"] == len(body)
    assert echoed["sha256"] == hashlib.sha256(body).hexdigest()


async def test_head_answers_headers_without_a_body(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.head(proxy.url + "/echo/head") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert await response.read() == b""


@pytest.mark.parametrize("status", [201, 204, 304, 400, 404, 409, 418, 422, 500])
async def test_backend_status_passes_through(
    status: int, backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(proxy.url + f"/status/{status}") as response:
        assert response.status == status
        body = await response.read()
    if status in (204, 304):
        assert body == b""
    else:
        assert body == b'{"status": %d}' % status


async def test_redirects_are_passed_on_not_followed(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    url = proxy.url + "/status/302?location=https://elsewhere.example/x"
    async with client.get(url, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "https://elsewhere.example/x"


async def test_redirect_into_the_api_is_rewritten_to_the_proxy_prefix(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(
        proxy.url + "/status/303?location=/api/videos/7", allow_redirects=False
    ) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/api/proxy/videos/7"


async def test_streamed_upload_without_length_arrives_whole(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    payload = os.urandom(5 * 1024 * 1024)

    async def chunks():
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    async with client.post(proxy.url + "/echo/upload", data=chunks()) as response:
        echoed = await response.json()
    assert echoed["length"] == len(payload)
    assert echoed["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_chunked_download_is_streamed_through_intact(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(proxy.url + "/stream?chunks=40&size=65536") as response:
        assert response.status == 200
        assert "Content-Length" not in response.headers
        body = await response.read()
    assert len(body) == 40 * 65536
    assert body[:256] == bytes(range(256))


async def test_compressed_bodies_pass_untouched(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The proxy neither decompresses nor re-encodes: Content-Encoding reaches the client."""
    proxy = await make_proxy(backend.url)
    async with client.get(proxy.url + "/echo/enc", headers={"Accept-Encoding": "gzip"}) as response:
        echoed = await response.json()
    assert echoed["headers"]["accept-encoding"] == ["gzip"]


async def test_server_sent_events_arrive_one_by_one(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(proxy.url + "/sse") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for number in range(3):
            # The next event exists only after this one was received through the proxy.
            await backend_state.sse_release.put(f"event-{number}")
            line = await response.content.readline()
            assert line == f"data: event-{number}\n".encode()
            assert await response.content.readline() == b"\n"
        await backend_state.sse_release.put("__end__")
        assert await response.content.read() == b""
