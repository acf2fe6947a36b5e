"""WebSocket upgrades are tunnelled to the api, under the same rules as any request."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp

from tests.fakes.backend import BackendState
from tests.fakes.servers import RunningServer
from tests.proxy.conftest import FRONTEND, MakeProxy, eventually


def masked_text_frame(text: str) -> bytes:
    """One client-to-server text frame (RFC 6455 §5.2), masked as clients must."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def handshake(path: str, *extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET /api/proxy{path} HTTP/1.1",
        "Host: app",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {key}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_websocket_is_tunnelled_to_the_api(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.ws_connect(proxy.url + "/ws", headers={"Origin": FRONTEND}) as socket:
        await socket.send_str("hello")
        assert await asyncio.wait_for(socket.receive_str(), 5) == "hello"
        await socket.send_str("again")
        assert await asyncio.wait_for(socket.receive_str(), 5) == "again"
    assert proxy.proxy.metrics.tunnels == 1


async def test_bytes_pipelined_right_behind_the_handshake_are_not_lost(
    backend: RunningServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(backend.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(handshake("/ws") + masked_text_frame("early"))  # one write, one packet
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    frame = await asyncio.wait_for(reader.readexactly(2 + len("early")), 5)
    assert frame == b"\x81\x05early"
    writer.close()


async def test_a_websocket_from_a_foreign_origin_reaches_nothing(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
) -> None:
    proxy = await make_proxy(backend.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(handshake("/ws", "Origin: https://evil.example"))
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 403 ")
    assert backend_state.count("websocket") == 0
    writer.close()


async def test_a_silent_tunnel_is_closed_after_the_idle_timeout(
    backend: RunningServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(handshake("/ws"))
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
    assert time.monotonic() - started < 2.0
    await eventually(lambda: proxy.proxy.slots.busy == 0)
    writer.close()
