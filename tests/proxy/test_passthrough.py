"""Messages pass through exactly as sent: bodies byte for byte, headers added by no one, odd but
legal answers from the backend never turned into a 500. The backend here is a raw socket
server, so what it sends and what it received are bytes on the wire, not a framework's view."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.proxy.conftest import MakeProxy, ProxyUnderTest


@dataclass
class RawBackend:
    """Answers each request with `answers[path]` (raw bytes, or a callable writing them slowly)
    and keeps the raw request it got."""

    answers: dict[str, bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]] = field(
        default_factory=dict
    )
    received: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            body = b""
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    body = await reader.readexactly(int(line.split(b":")[1]))
            if b"transfer-encoding: chunked" in head.lower():
                body = await reader.readuntil(b"\r\n0\r\n\r\n")
            self.received[path] = (head, body)
            answer = self.answers.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if isinstance(answer, bytes):
                writer.write(answer)
            else:
                await answer(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_backend() -> AsyncIterator[RawBackend]:
    backend = RawBackend()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", 0, limit=4 * 1024 * 1024)
    backend.port = server.sockets[0].getsockname()[1]
    yield backend
    server.close()


async def exchange(proxy: ProxyUnderTest, raw_request: bytes) -> bytes:
    """Send raw bytes to the proxy, return everything it answers (it closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(raw_request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def get(path: str, *extra: bytes) -> bytes:
    return b"\r\n".join(
        [b"GET /api/proxy" + path.encode() + b" HTTP/1.1", b"Host: app", *extra]
    ) + (b"\r\nConnection: close\r\n\r\n")


def head_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[0]


async def test_a_compressed_request_body_reaches_the_backend_byte_for_byte(
    raw_backend: RawBackend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(raw_backend.url, keepalive_timeout=0)
    small = gzip.compress(b'{"prompt": "a cat"}')
    large = gzip.compress(bytes(range(256)) * 2048, compresslevel=0)  # > 64 KiB: streamed
    for name, body in (("small", small), ("large", large)):
        async with client.post(
            proxy.url + f"/upload/{name}", data=body, headers={"Content-Encoding": "gzip"}
        ) as response:
            assert response.status == 200
        head, received = raw_backend.received[f"/api/upload/{name}"]
        assert b"Content-Encoding: gzip" in head
        assert received == body
    async with client.post(
        proxy.url + "/upload/br", data=b"\x8b\x02\x80hello\x03", headers={"Content-Encoding": "br"}
    ) as response:
        assert response.status == 200
    assert raw_backend.received["/api/upload/br"][1] == b"\x8b\x02\x80hello\x03"


async def test_an_unknown_transfer_coding_is_refused_with_501(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(raw_backend.url)
    answer = await exchange(
        proxy,
        b"POST /api/proxy/upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 501 ")
    assert b"Transfer-Encoding (gzip, chunked)" in answer
    assert set(raw_backend.received) <= {"/api/health"}


async def test_a_small_response_that_arrives_slowly_is_passed_on_as_it_arrives(
    raw_backend: RawBackend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def slow(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        await writer.drain()
        await release.wait()
        writer.write(b"-last")

    raw_backend.answers["/api/slow"] = slow
    proxy = await make_proxy(raw_backend.url)
    async with client.get(proxy.url + "/slow") as response:
        assert response.headers["Content-Length"] == "10"
        assert await asyncio.wait_for(response.content.readexactly(5), 5) == b"first"
        release.set()
        assert await response.read() == b"-last"


async def test_nothing_is_added_and_nothing_lost_in_the_response_headers(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    raw_backend.answers["/api/untyped"] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    raw_backend.answers["/api/latin1"] = (
        b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok"
    )
    raw_backend.answers["/api/odd-connection"] = (
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok"
    )
    proxy = await make_proxy(raw_backend.url)

    untyped = await exchange(proxy, get("/untyped"))
    assert b"content-type" not in head_of(untyped).lower()
    assert b"\r\nContent-Length: 5\r\n" in untyped
    assert untyped.endswith(b"hello")

    latin1 = await exchange(proxy, get("/latin1"))
    assert b"\r\nX-Name: caf\xe9\r\n" in latin1

    odd = await exchange(proxy, get("/odd-connection"))
    assert odd.startswith(b"HTTP/1.1 200 ")
    assert odd.endswith(b"ok")


async def test_a_malformed_retry_after_from_the_backend_is_never_a_500(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    raw_backend.answers["/api/busy"] = (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: \xc2\xb2\r\n"
        b"Content-Length: 4\r\n\r\nbusy"
    )
    proxy = await make_proxy(raw_backend.url, max_attempts=2)
    answer = await exchange(proxy, get("/busy"))
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert answer.endswith(b"busy")  # the backend's own answer, passed through


async def test_an_absolute_form_request_target_is_accepted(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(raw_backend.url)
    answer = await exchange(
        proxy,
        b"GET http://app/api/proxy/absolute?x=1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert "/api/absolute?x=1" in raw_backend.received


async def test_100_continue_only_after_the_size_origin_and_circuit_checks(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(raw_backend.url, max_body_bytes=100)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"POST /api/proxy/upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 413 ")  # never "100 Continue" first
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"POST /api/proxy/upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readline(), 5) == b"HTTP/1.1 100 Continue\r\n"
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 5)
    assert b"HTTP/1.1 200 " in rest
    assert raw_backend.received["/api/upload"][1] == b"hello"
    writer.close()


async def test_the_proxy_names_no_versions_in_server(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(raw_backend.url)
    for path in ("/fine", "/..%2fescape"):
        answer = await exchange(proxy, get(path))
        assert b"\r\nServer: sora2\r\n" in head_of(answer)
        assert b"aiohttp" not in answer
        assert b"Python" not in answer


async def test_request_header_bytes_that_are_not_utf8_reach_the_backend_unchanged(
    raw_backend: RawBackend, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(raw_backend.url)
    odd = b"X-Name: caf\xe9 \xff\xfe"
    answer = await exchange(proxy, get("/latin1-get", odd))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\n" + odd + b"\r\n" in raw_backend.received["/api/latin1-get"][0]

    small = b"POST /api/proxy/latin1-post HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
    answer = await exchange(proxy, small + odd + b"\r\nContent-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 200 ")
    head, body = raw_backend.received["/api/latin1-post"]
    assert b"\r\n" + odd + b"\r\n" in head
    assert body == b"hello"

    streamed = b"POST /api/proxy/latin1-chunked HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
    chunked = b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    answer = await exchange(proxy, streamed + odd + chunked)
    assert answer.startswith(b"HTTP/1.1 200 ")
    head, body = raw_backend.received["/api/latin1-chunked"]
    assert b"\r\n" + odd + b"\r\n" in head
    assert body.endswith(b"hello\r\n0\r\n\r\n")
