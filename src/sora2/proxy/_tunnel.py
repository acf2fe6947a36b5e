"""WebSocket upgrades, tunnelled: the handshake goes to the backend (after the same path,
origin and health checks as any request), and once it answers 101 the bytes flow both ways
untouched until either side closes or both stay silent for the idle timeout.

aiohttp's server stops parsing HTTP at an upgrade and hands every later byte, those the client
pipelined right behind its handshake included, to a "payload parser" it is given;
`ClientBytes` is that parser, turned into something to read from.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from multidict import CIMultiDict

# Pause reading from the client while this much of what it sent waits for the backend.
_BUFFER_LIMIT = 256 * 1024
_MAX_HEAD = 64 * 1024


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.strip().lower() != "websocket":
        return False
    connection = headers.get("Connection", "")
    return "upgrade" in (token.strip().lower() for token in connection.split(","))


class ClientBytes:
    """The client's bytes after its upgrade, as aiohttp's server feeds them."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self._chunks.append(data)
            self._size += len(data)
            if self._size > _BUFFER_LIMIT and not self._paused:
                self._paused = True
                self._transport.pause_reading()
            self._wake()
        return False, b""

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    async def read(self) -> bytes:
        """The next bytes, or b"" once the client has closed."""
        while not self._chunks:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size <= _BUFFER_LIMIT // 2:
            self._paused = False
            self._transport.resume_reading()
        return data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def handshake_head(method: str, target: str, host: str, headers: CIMultiDict[str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.extend(("Connection: Upgrade", "Upgrade: websocket"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def parse_response_head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    """Status, reason and headers of the backend's answer to the handshake."""
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isascii() or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError("malformed header line")
        headers.add(name, value.strip())
    return int(code), reason, headers


async def read_response_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > _MAX_HEAD:
        raise ValueError("response head too large")
    return head


async def pipe(
    read: Callable[[], Awaitable[bytes]],
    write: Callable[[bytes], Awaitable[None]],
    on_bytes: Callable[[int], None],
) -> None:
    """Copy until the reading side ends, reporting each chunk's size to `on_bytes`."""
    while True:
        data = await read()
        if not data:
            return
        on_bytes(len(data))
        await write(data)
