"""Moving bodies: the request body to the backend and the response body to the client, streamed.

Small bodies of known length are read whole (that makes a request replayable and a response one
write); everything else streams chunk by chunk, so memory stays flat whatever the size and
server-sent events reach the client as they are produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import aiohttp
from aiohttp import web

from sora2.proxy._idle import IdleStreams

# Request bodies up to this size are buffered so a retry can re-send them.
REPLAYABLE_BODY_BYTES = 64 * 1024
# Responses up to this size (with a Content-Length) are read whole and written in one go.
BUFFERED_RESPONSE_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 256 * 1024


class BodyTooLarge(Exception):
    """The client sent more body than the proxy accepts."""


class ClientGone(Exception):
    """The client went away, or stopped reading, before its request or our answer was complete."""


class BodyStalled(Exception):
    """The client stopped sending its request body for longer than the idle timeout."""


def _nothing() -> None:
    pass


class StreamedBody:
    """A request body forwarded as it arrives. It can be sent again only if no byte was read yet.

    `on_progress` runs before each wait for the next chunk (the proxy restarts its idle timer
    there) and `on_sent` once the whole body has gone (the request deadline starts then, so a
    long, steady upload is not cut off by it). `awaiting_client` tells, when a timer fires,
    whether the client or the backend was the one holding things up.
    """

    __slots__ = (
        "_content",
        "_limit",
        "awaiting_client",
        "on_progress",
        "on_sent",
        "sent",
        "started",
        "too_large",
    )

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.sent = 0
        self.started = False
        self.too_large = False
        self.awaiting_client = False
        self.on_progress: Callable[[], None] = _nothing
        self.on_sent: Callable[[], None] = _nothing

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._content
        while True:
            self.on_progress()
            self.awaiting_client = True
            chunk = await content.read(STREAM_CHUNK_BYTES)
            self.awaiting_client = False
            if not chunk:
                break
            self.started = True
            self.sent += len(chunk)
            if self.sent > self._limit:
                self.too_large = True
                raise BodyTooLarge
            yield chunk
        self.on_sent()


RequestBody = bytes | StreamedBody | None


async def read_request_body(request: web.Request, limit: int, idle_timeout: float) -> RequestBody:
    """None for no body, bytes when small and of known length, else a `StreamedBody`. Raises
    `BodyStalled` when a small body stops arriving for `idle_timeout` seconds."""
    if not request.body_exists:
        return None
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge
    if length is not None and length <= REPLAYABLE_BODY_BYTES:
        try:
            async with asyncio.timeout(idle_timeout):
                return await request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ClientGone from None
        except TimeoutError:
            raise BodyStalled from None
    return StreamedBody(request.content, limit)


def has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


class StreamBroken(Exception):
    """The backend stalled or broke off mid-body; the client's response must end broken too."""


def _broken(error: BaseException) -> StreamBroken:
    """What a failed read of the upstream body means for the client's response. Silence longer
    than the idle timeout is enforced by the client session's `sock_read` timeout (a
    `TimeoutError` here)."""
    if isinstance(error, TimeoutError):
        return StreamBroken("idle timeout")
    if isinstance(error, aiohttp.ClientPayloadError):
        return StreamBroken(f"truncated body: {error}")
    return StreamBroken(type(error).__name__)


_READ_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


class _Readable(Protocol):
    async def read(self) -> bytes: ...


async def read_small_body(upstream: _Readable) -> bytes:
    try:
        return await upstream.read()
    except _READ_ERRORS as error:
        raise _broken(error) from None


async def stream_body(
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    count_bytes: Callable[[int], None],
    send_timeout: float,
    idle: IdleStreams,
) -> None:
    """Copy the body chunk by chunk, reporting each chunk's size to `count_bytes`. Raises
    `StreamBroken` if the backend fails or stays silent for the idle timeout mid-way (`idle`
    watches that), `ClientGone` if the client leaves or stops reading for `send_timeout` seconds
    (its connection to the backend is then freed)."""
    # The read is awaited here rather than in a helper: a held stream spends its life waiting
    # on it, and every coroutine in that chain is a frame kept per stream and resumed per event.
    readany = upstream.content.readany
    idle.watch(upstream)
    try:
        while True:
            try:
                chunk = await readany()
            except _READ_ERRORS as error:
                raise _broken(error) from None
            if not chunk:
                return
            try:
                # A write only waits when the client's socket buffers are full: it is not
                # reading.
                async with asyncio.timeout(send_timeout):
                    await response.write(chunk)
            except (ConnectionError, TimeoutError):
                raise ClientGone from None
            count_bytes(len(chunk))
    finally:
        idle.forget(upstream)
