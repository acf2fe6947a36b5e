"""A test backend behind the proxy: echoes, counts, streams, stalls and misbehaves on request.

Every route lives under `/api/` like the real api. Tests read `BackendState` to learn what
actually arrived (method, path, query, headers, body digest) and how often.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MiB = 1024 * 1024
_PATTERN = bytes(range(256)) * 256  # 64 KiB of every byte value


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, list[str]]
    body_sha256: str
    body_length: int


@dataclass
class BackendState:
    received: list[Received] = field(default_factory=list)
    every_path: list[str] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    health_status: int = 200
    health_hits: int = 0
    cancelled: int = 0
    sse_release: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    stall_started: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, key: str) -> int:
        return self.hits[key]


STATE_KEY = web.AppKey("state", BackendState)


def _state(request: web.Request) -> BackendState:
    return request.app[STATE_KEY]


async def _record(request: web.Request) -> Received:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    received = Received(
        method=request.method,
        path=request.raw_path.partition("?")[0],
        query=request.query_string,
        headers=headers,
        body_sha256=digest.hexdigest(),
        body_length=length,
    )
    state = _state(request)
    state.received.append(received)
    state.hits[request.match_info.get("key", request.path)] += 1
    return received


async def echo(request: web.Request) -> web.StreamResponse:
    received = await _record(request)
    body: dict[str, Any] = {
        "method": received.method,
        "path": received.path,
        "query": received.query,
        "headers": received.headers,
        "sha256": received.body_sha256,
        "length": received.body_length,
    }
    return web.json_response(body, headers={"X-Backend": "echo"})


async def count(request: web.Request) -> web.Response:
    await _record(request)
    return web.json_response({"count": _state(request).count(request.match_info["key"])})


async def health(request: web.Request) -> web.Response:
    state = _state(request)
    state.health_hits += 1
    return web.json_response({"status": "ok"}, status=state.health_status)


async def status(request: web.Request) -> web.Response:
    await _record(request)
    code = int(request.match_info["code"])
    headers = {}
    if "retry_after" in request.query:
        headers["Retry-After"] = request.query["retry_after"]
    if code in (204, 304):
        return web.Response(status=code, headers=headers)
    if 300 <= code < 400:
        headers["Location"] = request.query.get("location", "/api/echo/redirected")
    return web.json_response({"status": code}, status=code, headers=headers)


async def headers_route(request: web.Request) -> web.Response:
    """Every end-to-end header a proxy must keep, plus hop-by-hop ones it must drop."""
    await _record(request)
    response = web.Response(body=b"partial", status=206)
    response.headers["Content-Type"] = "application/octet-stream"
    response.headers["Content-Disposition"] = 'attachment; filename="clip.mp4"'
    response.headers["ETag"] = '"abc123"'
    response.headers["Cache-Control"] = "private, max-age=60"
    response.headers["Retry-After"] = "7"
    response.headers["Content-Range"] = "bytes 0-6/100"
    response.headers["Location"] = "/api/videos/1"
    response.headers["X-Secret-Hop"] = "must-not-pass"
    response.headers["Connection"] = "X-Secret-Hop"
    response.headers["Keep-Alive"] = "timeout=5"
    response.headers.add("Set-Cookie", "access=a1; Path=/api; HttpOnly; SameSite=Lax")
    response.headers.add("Set-Cookie", "refresh=r1; Path=/api/auth/refresh; HttpOnly")
    response.headers.add("Set-Cookie", "other=o1; Path=/apiary")
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    """`chunks` chunks of `size` bytes, chunked encoding (no Content-Length)."""
    await _record(request)
    chunks = int(request.query.get("chunks", "4"))
    size = int(request.query.get("size", "65536"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for _ in range(chunks):
        await response.write(_PATTERN[:size] if size <= len(_PATTERN) else b"x" * size)
    await response.write_eof()
    return response


async def big(request: web.Request) -> web.StreamResponse:
    """A download of `mib` MiB with a Content-Length, generated as it is sent."""
    await _record(request)
    total = int(request.query.get("mib", "256")) * MiB
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)}
    )
    await response.prepare(request)
    chunk = _PATTERN * 4  # 256 KiB
    sent = 0
    try:
        while sent < total:
            piece = chunk[: total - sent]
            await response.write(piece)
            sent += len(piece)
    except (ConnectionError, asyncio.CancelledError):
        _state(request).cancelled += 1
        raise
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    """Server-sent events released one at a time by the test through `state.sse_release`."""
    await _record(request)
    state = _state(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    while True:
        data = await state.sse_release.get()
        if data == "__end__":
            break
        await response.write(f"data: {data}\n\n".encode())
    await response.write_eof()
    return response


async def stall(request: web.Request) -> web.StreamResponse:
    """Never answers; counts the request as cancelled when the caller goes away."""
    await _record(request)
    state = _state(request)
    state.stall_started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        state.cancelled += 1
        raise
    raise AssertionError("unreachable")


async def stall_body(request: web.Request) -> web.StreamResponse:
    """Sends headers and a first chunk, then stalls mid-body."""
    await _record(request)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write(b"first-chunk")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        _state(request).cancelled += 1
        raise
    return response


async def huge_header(request: web.Request) -> web.Response:
    """A response whose one header is over aiohttp's 8190-byte limit: never parseable."""
    await _record(request)
    return web.Response(text="unreachable", headers={"X-Huge": "h" * 10_000})


async def websocket_echo(request: web.Request) -> web.StreamResponse:
    """A WebSocket that sends back every text message it gets."""
    _state(request).hits["websocket"] += 1
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type is web.WSMsgType.TEXT:
            await socket.send_str(message.data)
    return socket


@web.middleware
async def _note_every_request(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request.app[STATE_KEY].every_path.append(request.raw_path)
    return await handler(request)


def create_backend(state: BackendState | None = None) -> web.Application:
    app = web.Application(client_max_size=1024 * MiB, middlewares=[_note_every_request])
    app[STATE_KEY] = state or BackendState()
    app.router.add_get("/api/health", health)
    app.router.add_route("*", "/api/echo{tail:.*}", echo)
    app.router.add_route("*", "/api/count/{key}", count)
    app.router.add_route("*", "/api/status/{code}", status)
    app.router.add_get("/api/headers", headers_route)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/big", big)
    app.router.add_get("/api/sse", sse)
    app.router.add_route("*", "/api/stall", stall)
    app.router.add_get("/api/stall-body", stall_body)
    app.router.add_get("/api/huge-header", huge_header)
    app.router.add_get("/api/ws", websocket_echo)
    return app


def json_body(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value
