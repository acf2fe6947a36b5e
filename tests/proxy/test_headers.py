"""Headers: hop-by-hop dropped both ways, forwarding headers set, end-to-end ones kept."""

from __future__ import annotations

import ipaddress

import aiohttp
from multidict import CIMultiDict

from tests.fakes.servers import RunningServer
from tests.proxy.conftest import MakeProxy


async def test_hop_by_hop_request_headers_are_not_forwarded(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    headers = {
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "secret-hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Connection": "keep-alive",
        "Upgrade": "websocket",
        "X-Keep-Me": "end-to-end",
        "Authorization": "Bearer token-for-backend",
    }
    async with client.get(proxy.url + "/echo/hop", headers=headers) as response:
        received = (await response.json())["headers"]
    for name in ("x-drop-me", "keep-alive", "te", "proxy-connection", "upgrade"):
        assert name not in received, name
    assert received["x-keep-me"] == ["end-to-end"]
    assert received["authorization"] == ["Bearer token-for-backend"]


async def test_the_proxy_adds_no_request_headers_of_its_own(
    backend: RunningServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(backend.url)
    async with (
        aiohttp.ClientSession(
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
        ) as bare,
        bare.post(proxy.url + "/echo/plain", data=b"raw") as response,
    ):
        received = (await response.json())["headers"]
    assert set(received) == {
        "host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "via", "x-request-id", "forwarded",
    }  # fmt: skip


async def test_end_to_end_response_headers_are_kept_and_hop_by_hop_dropped(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(proxy.url + "/headers") as response:
        assert response.status == 206
        headers = response.headers
        assert headers["Content-Disposition"] == 'attachment; filename="clip.mp4"'
        assert headers["ETag"] == '"abc123"'
        assert headers["Cache-Control"] == "private, max-age=60"
        assert headers["Retry-After"] == "7"
        assert headers["Content-Range"] == "bytes 0-6/100"
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Location"] == "/api/proxy/videos/1"
        assert "X-Secret-Hop" not in headers
        assert "Keep-Alive" not in headers
        assert "Access-Control-Allow-Origin" not in headers
        assert "sora2" in headers["Via"]
        assert await response.read() == b"partial"


async def test_set_cookie_paths_are_rewritten_to_the_proxy_prefix(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(proxy.url + "/headers") as response:
        cookies = response.headers.getall("Set-Cookie")
    assert cookies == [
        "access=a1; Path=/api/proxy; HttpOnly; SameSite=Lax",
        "refresh=r1; Path=/api/proxy/auth/refresh; HttpOnly",
        "other=o1; Path=/apiary",
    ]


async def test_client_x_forwarded_for_is_replaced_when_not_from_a_trusted_proxy(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example"}
    async with client.get(proxy.url + "/echo/xff", headers=spoofed) as response:
        received = (await response.json())["headers"]
    assert received["x-forwarded-for"] == ["127.0.0.1"]
    assert received["x-forwarded-proto"] == ["http"]
    assert received["x-forwarded-host"] == [f"127.0.0.1:{proxy.server.port}"]
    assert received["via"] == ["1.1 sora2"]


async def test_trusted_proxy_chain_is_extended(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    chain = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    async with client.get(proxy.url + "/echo/xff", headers=chain) as response:
        received = (await response.json())["headers"]
    assert received["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert received["x-forwarded-proto"] == ["https"]


async def test_every_forwarding_header_line_is_kept_and_odd_protos_ignored(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    chain = CIMultiDict(
        [
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", "198.51.100.7"),
            ("X-Forwarded-Proto", "javascript"),
            ("Forwarded", "for=203.0.113.9;proto=https"),
            ("Forwarded", "for=198.51.100.7"),
        ]
    )
    async with client.get(proxy.url + "/echo/xff", headers=chain) as response:
        received = (await response.json())["headers"]
    assert received["x-forwarded-for"] == ["203.0.113.9, 198.51.100.7, 127.0.0.1"]
    assert received["x-forwarded-proto"] == ["http"]  # only http or https is believed
    host = f"127.0.0.1:{proxy.server.port}"
    assert received["forwarded"] == [
        f'for=203.0.113.9;proto=https, for=198.51.100.7, for=127.0.0.1;host="{host}";proto=http'
    ]


async def test_an_untrusted_forwarded_header_is_replaced(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    spoofed = {"Forwarded": "for=6.6.6.6;proto=https", "X-Forwarded-Proto": "https"}
    async with client.get(proxy.url + "/echo/fwd", headers=spoofed) as response:
        received = (await response.json())["headers"]
    host = f"127.0.0.1:{proxy.server.port}"
    assert received["forwarded"] == [f'for=127.0.0.1;host="{host}";proto=http']
    assert received["x-forwarded-proto"] == ["http"]


async def test_sane_request_id_is_kept_and_sent_upstream(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.get(
        proxy.url + "/echo/rid", headers={"X-Request-ID": "req-abc.123"}
    ) as response:
        assert response.headers["X-Request-ID"] == "req-abc.123"
        assert (await response.json())["headers"]["x-request-id"] == ["req-abc.123"]


async def test_insane_or_missing_request_id_is_replaced(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    for supplied in ({"X-Request-ID": "bad id with spaces <script>"}, {}):
        async with client.get(proxy.url + "/echo/rid", headers=supplied) as response:
            generated = response.headers["X-Request-ID"]
            received = (await response.json())["headers"]["x-request-id"]
        assert len(generated) == 32
        assert generated.isalnum()
        assert received == [generated]
