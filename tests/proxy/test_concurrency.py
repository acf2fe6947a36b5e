"""No client starves the others: streams, clients that stop reading and bodies that stall hold
only what is theirs; health checks and ordinary requests still get through."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import aiohttp

from sora2.proxy import CircuitState, Health
from tests.fakes.backend import BackendState
from tests.fakes.servers import RunningServer
from tests.proxy.conftest import ACCEPTS, MakeProxy, accept_of, eventually


@contextlib.asynccontextmanager
async def open_streams(
    url: str, count: int, headers: dict[str, str] | None = None
) -> AsyncIterator[list[aiohttp.ClientResponse]]:
    """`count` server-sent-event streams held open (headers received, body unread)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        streams = await asyncio.gather(*(session.get(url) for _ in range(count)))
        try:
            yield list(streams)
        finally:
            for stream in streams:
                stream.close()


async def send_without_reading(port: int, request: bytes) -> socket.socket:
    """A client that sends `request` and then never reads a byte of the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(sock, request)
    return sock


async def read_status(reader: asyncio.StreamReader) -> int:
    status_line = await asyncio.wait_for(reader.readline(), 10)
    return int(status_line.split()[1])


async def test_health_checks_and_requests_are_not_blamed_on_the_backend_when_the_pool_is_full(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, pool_size=4, request_timeout=0.6, connect_timeout=0.2)
    await eventually(lambda: proxy.proxy.health.verdict is Health.UP)
    async with open_streams(proxy.url + "/sse", 4):
        # The health check has a connection of its own.
        assert await proxy.proxy.health.check() is Health.UP
        started = time.monotonic()
        async with client.get(proxy.url + "/echo/ordinary") as response:
            waited = time.monotonic() - started
            body = await response.json()
        assert response.status == 503
        assert body["error"] == "Proxy At Capacity"
        assert body["details"]["errorCode"] == "EPOOLWAIT"
        assert response.headers["Retry-After"] == "1"
        assert 0.5 <= waited < 1.5  # it waited its deadline for a connection, not a connect timeout
        # The wait was the proxy's own congestion: nothing retried, nothing held against the api.
        assert body["details"]["attempts"] == 0
        assert proxy.proxy.circuit.consecutive_failures == 0
        assert proxy.proxy.metrics.attempts["connect_error"] == 0
        assert proxy.proxy.metrics.pool_timeouts == 1
    # Streams closed: their connections are free again.
    await eventually(lambda: proxy.proxy.slots.busy == 0)
    async with client.get(proxy.url + "/echo/after") as response:
        assert response.status == 200


async def test_a_request_waiting_for_a_connection_gets_one_as_soon_as_a_stream_ends(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, pool_size=2, request_timeout=5.0)
    async with open_streams(proxy.url + "/sse", 2) as streams:
        pending = asyncio.ensure_future(client.get(proxy.url + "/echo/queued"))
        await eventually(lambda: proxy.proxy.slots.waiting == 1)
        streams[0].close()
        response = await asyncio.wait_for(pending, 5)
        assert response.status == 200
        response.release()


async def test_hundreds_of_streams_and_stalled_readers_leave_ordinary_requests_answered(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    """The load the default pool (256) used to fail at: every request after it was a 503."""
    proxy = await make_proxy(backend.url, idle_timeout=2.0, request_timeout=5.0)
    accept = accept_of(client)
    request = b"GET /api/proxy/big?mib=16 HTTP/1.1\r\nHost: x\r\n" + accept + b"\r\n"
    stalled = [await send_without_reading(proxy.server.port, request) for _ in range(40)]
    try:
        async with open_streams(proxy.url + "/sse", 400, dict(client.headers)):
            for _ in range(20):
                async with client.get(proxy.url + "/echo/ordinary") as response:
                    assert response.status == 200
                async with client.get(proxy.url + "/health") as response:
                    assert response.status == 200
            assert proxy.proxy.circuit.state is CircuitState.CLOSED
            assert await proxy.proxy.health.check() is Health.UP
            # Each client that stopped reading lost its download, and its backend connection.
            await eventually(lambda: backend_state.cancelled == 40, timeout=15)
    finally:
        for sock in stalled:
            sock.close()


@ACCEPTS
async def test_a_client_that_stops_reading_frees_its_backend_connection(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    accept: bytes,
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=0.3)
    request = b"GET /api/proxy/big?mib=64 HTTP/1.1\r\nHost: x\r\n" + accept + b"\r\n"
    sock = await send_without_reading(proxy.server.port, request)
    try:
        await eventually(lambda: backend_state.cancelled == 1, timeout=10)
        await eventually(lambda: proxy.proxy.slots.busy == 0)
    finally:
        sock.close()


async def test_a_stalled_small_request_body_gets_408_after_the_idle_timeout(
    backend: RunningServer, backend_state: BackendState, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=0.3, request_timeout=5.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"POST /api/proxy/echo/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    writer.write(b"x" * 10)
    started = time.monotonic()
    assert await read_status(reader) == 408
    assert 0.25 <= time.monotonic() - started < 2.0
    rest = await asyncio.wait_for(reader.read(65536), 5)
    assert b"Request Body Timeout" in rest
    writer.close()
    assert backend_state.received == []  # nothing half-sent reached the backend


async def test_a_stalled_streamed_request_body_gets_408_not_504(
    backend: RunningServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=0.3, request_timeout=5.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"POST /api/proxy/echo/slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
    )
    started = time.monotonic()
    assert await read_status(reader) == 408
    assert time.monotonic() - started < 2.0
    assert proxy.proxy.circuit.consecutive_failures == 0
    writer.close()


async def test_a_steady_upload_longer_than_the_request_deadline_is_not_cut(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=1.0, request_timeout=0.4)

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 65536
            await asyncio.sleep(0.1)  # a slow link: the upload takes twice the deadline

    async with client.put(proxy.url + "/echo/upload", data=upload()) as response:
        assert response.status == 200
        assert (await response.json())["length"] == 8 * 65536
