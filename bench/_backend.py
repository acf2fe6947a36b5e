"""The benchmark's backend: a minimal HTTP/1.1 server on a uvloop protocol.

It answers the few routes the proxy bench requests, with keep-alive, and does as little as an
HTTP server can so that the backend is never what limits a proxy's numbers (the bench measures
it directly to show that). Run it as `python -m bench._backend --port N`.

    GET /api/health               200 {"status":"ok"}   (the proxy's active health check)
    GET /api/bench/small          200 a ~100-byte JSON document
    GET /api/bench/download?bytes=N   200 N bytes of application/octet-stream, streamed
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast
from urllib.parse import parse_qs, urlsplit

import uvloop

SMALL_JSON = json.dumps(
    {"id": "vid_0123456789", "status": "completed", "progress": 100, "model": "sora-2"},
    separators=(",", ":"),
).encode()
HEALTH_JSON = b'{"status":"ok"}'
DOWNLOAD_CHUNK = b"\0" * (256 * 1024)
# Bound what one download keeps queued in the transport: flow control, not memory, paces it.
WRITE_BUFFER_HIGH = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024


def _response_head(status: str, content_type: str, length: int, close: bool) -> bytes:
    connection = "close" if close else "keep-alive"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"Connection: {connection}\r\n\r\n"
    ).encode()


def _json_response(body: bytes, close: bool, status: str = "200 OK") -> bytes:
    return _response_head(status, "application/json", len(body), close) + body


# The hot route's whole answer is prebuilt once: the backend must cost next to nothing.
SMALL_RESPONSE = _json_response(SMALL_JSON, close=False)


class _Request:
    __slots__ = ("close", "path", "target")

    def __init__(self, target: str, close: bool) -> None:
        self.target = target
        self.path = target.split("?", 1)[0]
        self.close = close


def _parse_head(head: bytes) -> tuple[_Request, int]:
    """The request line and the headers that matter here: its body length and Connection."""
    lines = head.decode("latin-1").split("\r\n")
    _method, target, version = lines[0].split(" ", 2)
    body_length = 0
    close = version == "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            body_length = int(value.strip())
        elif name == "connection":
            close = value.strip().lower() == "close"
    return _Request(target, close), body_length


class BenchHttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._body_to_skip = 0
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._streaming: asyncio.Task[None] | None = None
        self._queued: list[_Request] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._can_write.set()
        if self._streaming is not None:
            self._streaming.cancel()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._body_to_skip:
                skipped = min(self._body_to_skip, len(self._buffer))
                del self._buffer[:skipped]
                self._body_to_skip -= skipped
                if self._body_to_skip:
                    return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._reply_and_close(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            try:
                request, self._body_to_skip = _parse_head(head)
            except ValueError:
                self._reply_and_close(b"HTTP/1.1 400 Bad Request\r\n")
                return
            self._handle(request)

    def _reply_and_close(self, status_line: bytes) -> None:
        assert self._transport is not None
        self._transport.write(status_line + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self._transport.close()

    def _handle(self, request: _Request) -> None:
        # A download in progress owns the connection; pipelined requests wait their turn.
        if self._streaming is not None:
            self._queued.append(request)
            return
        assert self._transport is not None
        if request.path == "/api/bench/small" and not request.close:
            self._transport.write(SMALL_RESPONSE)
        elif request.path == "/api/bench/small":
            self._transport.write(_json_response(SMALL_JSON, close=True))
        elif request.path == "/api/health":
            self._transport.write(_json_response(HEALTH_JSON, request.close))
        elif request.path == "/api/bench/download":
            self._streaming = asyncio.ensure_future(self._download(request))
            return
        else:
            body = b'{"error":"Not Found"}'
            self._transport.write(_json_response(body, request.close, "404 Not Found"))
        if request.close:
            self._transport.close()

    async def _download(self, request: _Request) -> None:
        assert self._transport is not None
        query = parse_qs(urlsplit(request.target).query)
        remaining = int(query.get("bytes", ["0"])[0])
        self._transport.write(
            _response_head("200 OK", "application/octet-stream", remaining, request.close)
        )
        chunk = memoryview(DOWNLOAD_CHUNK)
        while remaining > 0:
            await self._can_write.wait()
            if self._transport.is_closing():
                return
            piece = chunk[: min(remaining, len(chunk))]
            self._transport.write(piece)
            remaining -= len(piece)
        self._streaming = None
        if request.close:
            self._transport.close()
            return
        queued, self._queued = self._queued, []
        for waiting in queued:
            self._handle(waiting)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BenchHttpProtocol, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="The proxy benchmark's backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
