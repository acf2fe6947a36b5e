"""Long-lived streamed responses (server-sent events): the idle timeout that one shared timer keeps
for every streamed body (`_idle.py`) instead of aiohttp's timer per connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.backend import BackendState
from tests.fakes.servers import RunningServer
from tests.proxy.conftest import MakeProxy, eventually

IDLE = 0.3


async def test_a_stream_with_events_coming_outlives_many_idle_timeouts(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=IDLE)
    async with client.get(proxy.url + "/sse") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 5 * IDLE:  # each gap is well under the idle timeout
            count += 1
            await backend_state.sse_release.put(f"event {count}")
            event = await response.content.readuntil(b"\n\n")
            assert event == f"data: event {count}\n\n".encode()
            await asyncio.sleep(IDLE / 3)
        assert proxy.proxy.streaming == 1
        await backend_state.sse_release.put("__end__")
        assert await response.read() == b""  # the body ends complete, not broken
    assert proxy.proxy.metrics.truncated_responses == 0
    await eventually(lambda: proxy.proxy.streaming == 0)


async def test_a_stream_whose_backend_falls_silent_is_cut_and_counted_as_truncated(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=IDLE)
    async with client.get(proxy.url + "/stall-body") as response:
        assert response.status == 200
        assert await response.content.readexactly(11) == b"first-chunk"
        silent_since = time.monotonic()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        cut_after = time.monotonic() - silent_since
    # Never before the idle timeout; at most a sweep or two after it (see _idle.py).
    assert IDLE * 0.9 <= cut_after < IDLE * 3
    assert proxy.proxy.metrics.truncated_responses == 1
    await eventually(lambda: backend_state.cancelled == 1)
    assert proxy.proxy.streaming == 0


async def test_a_connection_used_by_a_stream_keeps_its_read_timeout_for_the_next_request(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=IDLE, max_attempts=1)
    async with client.get(proxy.url + "/sse") as response:
        await backend_state.sse_release.put("__end__")
        assert await response.read() == b""
    # The stream gave its connection back to the pool; the next request reuses it, and a
    # backend that never answers is still a 504 after the idle timeout, not a wait for ever.
    started = time.monotonic()
    async with client.get(proxy.url + "/stall") as response:
        assert response.status == 504
    assert time.monotonic() - started < IDLE * 4


@contextlib.asynccontextmanager
async def scripted_backend(*pieces: bytes) -> AsyncIterator[str]:
    """A backend answering every request but health checks with `pieces`, written one by one
    (each flushed before the next), then holding the connection until the client leaves."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /api/health"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        else:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
            await reader.read()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


EVENT_STREAM = {"Accept": "text/event-stream"}
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
)


async def test_an_event_stream_arrives_as_the_backend_framed_it_past_early_hints(
    make_proxy: MakeProxy,
) -> None:
    """Chunks cut mid-size-line, an extension, a trailer: the events arrive whole, in order,
    the stream ends complete; an informational 103 before the answer is skipped."""
    async with scripted_backend(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n",
        STREAM_HEAD.replace(b" 200 OK", b" 200") + b"\r\n",
        b"d\r\ndata: first\n\n\r\n1",
        b"0;ext=1\r\ndata: second!!\n\n\r\n",
        b"0\r\nX-Trailer: done\r\n\r\n",
    ) as backend_url:
        proxy = await make_proxy(backend_url)
        async with (
            aiohttp.ClientSession(headers=EVENT_STREAM) as client,
            client.get(proxy.url + "/events") as response,
        ):
            assert (response.status, response.reason) == (200, "")  # not "Early Hints"
            assert "Link" not in response.headers
            assert await response.read() == b"data: first\n\ndata: second!!\n\n"
    assert proxy.proxy.metrics.truncated_responses == 0
    assert proxy.proxy.metrics.bytes_out == 29


async def test_an_event_stream_the_backend_garbles_is_cut_and_counted_as_truncated(
    make_proxy: MakeProxy,
) -> None:
    async with scripted_backend(
        STREAM_HEAD + b"\r\n", b"d\r\ndata: first\n\n\r\n", b"not-a-size\r\n"
    ) as backend_url:
        proxy = await make_proxy(backend_url)
        async with (
            aiohttp.ClientSession(headers=EVENT_STREAM) as client,
            client.get(proxy.url + "/events") as response,
        ):
            assert await response.content.readexactly(13) == b"data: first\n\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    assert proxy.proxy.metrics.truncated_responses == 1
    await eventually(lambda: proxy.proxy.streaming == 0)


async def test_an_event_stream_head_with_bare_line_feeds_is_read_as_aiohttp_reads_it(
    make_proxy: MakeProxy,
) -> None:
    head = STREAM_HEAD.replace(b"\r\n", b"\n") + b"\n"
    async with scripted_backend(head, b"d\r\ndata: first\n\n\r\n0\r\n\r\n") as backend_url:
        proxy = await make_proxy(backend_url, idle_timeout=5.0)
        async with (
            aiohttp.ClientSession(headers=EVENT_STREAM) as client,
            client.get(proxy.url + "/events") as response,
        ):
            assert response.status == 200
            assert await response.read() == b"data: first\n\n"


async def test_an_upgrade_answered_to_an_event_stream_is_a_bad_gateway_not_a_500(
    make_proxy: MakeProxy,
) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with scripted_backend(switch) as backend_url:
        proxy = await make_proxy(backend_url, max_attempts=1)
        async with (
            aiohttp.ClientSession(headers=EVENT_STREAM) as client,
            client.get(proxy.url + "/events") as response,
        ):
            assert response.status == 502
            assert (await response.json())["details"]["errorCode"] == "EINVALIDRESPONSE"
