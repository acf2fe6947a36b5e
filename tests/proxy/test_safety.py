"""Safety: only API_URL under /api/ is ever reached; big bodies refused; CORS never reflects."""

from __future__ import annotations

import ipaddress
import os

import aiohttp
import pytest
from yarl import URL

from tests.fakes.backend import BackendState
from tests.fakes.servers import RunningServer
from tests.proxy.conftest import FRONTEND, MakeProxy

ESCAPES = [
    "/..",
    "/..;/health",
    "/echo/..;x/..;y/secret",
    "/%EF%BC%8E%EF%BC%8E/secret",
    "/../health",
    "/echo/../../secret",
    "/%2e%2e/secret",
    "/%2E%2e%2fsecret",
    "/%252e%252e/secret",
    "/echo//evil.example/x",
    "/%2F%2Fevil.example",
    "//evil.example/x",
    "/http://evil.example/",
    "/http:%2F%2Fevil.example",
    "/echo%5C..%5Csecret",
    "/echo/%00",
    "/echo/%0d%0aX-Injected:%201",
    "/echo/%ff%fe",
    "/./echo",
]


@pytest.mark.parametrize("escape", ESCAPES)
async def test_path_escapes_get_400_and_reach_nothing(
    escape: str,
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(URL(proxy.url + escape, encoded=True)) as response:
        status = response.status
        body = await response.read()
    assert status == 400, (status, body)
    assert b'"error": "Bad Request"' in body
    assert [path for path in backend_state.every_path if path != "/api/health"] == []


async def test_body_over_the_limit_by_content_length_gets_413_without_upstream_call(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, max_body_bytes=1000)
    async with client.post(proxy.url + "/echo/big", data=b"x" * 1001) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "Payload Too Large"
    assert backend_state.received == []


async def test_streamed_body_over_the_limit_gets_413(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, max_body_bytes=200_000)

    async def chunks():
        for _ in range(10):
            yield os.urandom(50_000)

    async with client.post(proxy.url + "/echo/big", data=chunks()) as response:
        assert response.status == 413


async def test_allowed_origin_gets_cors_with_credentials(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.post(proxy.url + "/echo/x", headers={"Origin": FRONTEND}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]


async def test_same_origin_writes_are_allowed(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    own = proxy.server.url
    async with client.delete(proxy.url + "/echo/x", headers={"Origin": own}) as response:
        assert response.status == 200


async def test_foreign_origin_is_never_reflected_and_cannot_write(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url)
    evil = {"Origin": "https://evil.example"}
    async with client.get(proxy.url + "/echo/read", headers=evil) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        async with client.request(method, proxy.url + "/echo/write", headers=evil) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
            assert (await response.json())["error"] == "Forbidden Origin"
    assert [r.path for r in backend_state.received] == ["/api/echo/read"]


async def test_preflight_is_answered_for_the_allowed_origin_only(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-request-id",
    }
    async with client.options(
        proxy.url + "/videos", headers={**preflight, "Origin": FRONTEND}
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "content-type, x-request-id"
    async with client.options(
        proxy.url + "/videos", headers={**preflight, "Origin": "https://evil.example"}
    ) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    assert backend_state.received == []


async def test_a_preflight_allows_only_the_configured_request_headers(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    preflight = {
        "Origin": FRONTEND,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-admin-override, authorization",
    }
    async with client.options(proxy.url + "/videos", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Headers"] == "content-type, authorization"


async def test_every_response_varies_on_origin(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    for path in ("/echo/plain", "/..%2fescape", "/status/503"):
        async with client.get(proxy.url + path) as response:  # no Origin header at all
            assert "Origin" in response.headers.getall("Vary", [])


async def test_same_origin_behind_a_trusted_tls_proxy_may_write(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The page is https://… at the TLS proxy in front; the web itself is reached over http."""
    trusted = (ipaddress.ip_network("127.0.0.0/8"),)
    proxy = await make_proxy(backend.url, trusted_proxies=trusted)
    untrusting = await make_proxy(backend.url)
    for server, expected in ((proxy, 200), (untrusting, 403)):
        page_origin = f"https://127.0.0.1:{server.server.port}"
        headers = {"Origin": page_origin, "X-Forwarded-Proto": "https"}
        async with client.post(server.url + "/echo/write", headers=headers) as response:
            assert response.status == expected
