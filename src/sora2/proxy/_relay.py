"""Requests and responses that carry their headers exactly as they came.

aiohttp's server adds `Content-Type: application/octet-stream` to any body without one and
writes header values as UTF-8, dropping bytes that are not (aiohttp's parsers hand them over as
surrogate escapes). A proxy must add nothing and lose nothing, so the two response classes here
remove an invented `Content-Type` and, when a header carries such bytes, write the head
themselves with the bytes restored. Both hook `_write_headers`, the one step between aiohttp
settling the headers and sending them. `ExactRequest` does the same for the request head that
goes to the backend (aiohttp's client drops such bytes too: `caf\xe9` arrived as `caf`).
All of them rely on aiohttp buffering the head in its `StreamWriter` (`_headers_buf`) until the
first body write, as aiohttp 3.12 and later do.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.connector import Connection
from aiohttp.http_writer import StreamWriter
from aiohttp.payload import BytesPayload
from multidict import CIMultiDict

# What aiohttp's own serializer refuses too (header injection): RFC 9110 §5.5.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_raw_bytes(value: str) -> bool:
    """A header value holding bytes that were not UTF-8 (as surrogate escapes)."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def any_raw_bytes(headers: CIMultiDict[str]) -> bool:
    """Whether any header value holds bytes that were not UTF-8 (all-ASCII heads, nearly all,
    are told apart in a fraction of a microsecond)."""
    values = headers.values()
    if all(map(str.isascii, values)):
        return False
    return any(has_raw_bytes(value) for value in values)


def raw_head(first_line: str, headers: CIMultiDict[str]) -> bytes:
    """A message head (request or status line, then the headers) with non-UTF-8 bytes restored."""
    lines = [first_line]
    for name, value in headers.items():
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            raise ValueError("control character in a header")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class ExactRequest(aiohttp.ClientRequest):
    """A client request whose head reaches the backend byte for byte, non-UTF-8 bytes included.

    aiohttp serializes the head into the writer's buffer in `send()` and writes it out with the
    first body bytes (`write_bytes`), or at once when there is no body. When a header holds such
    bytes, a request without a body is given an empty one so that the head always waits for
    `write_bytes`, which replaces the buffered head with one encoded as the bytes came in.
    Requests whose headers are all UTF-8 (nearly all) take aiohttp's path untouched.
    """

    _exact_head = False

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        if any_raw_bytes(self.headers):
            self._exact_head = True
            if self._body is None:
                self._body = BytesPayload(b"")
        return await super().send(conn)

    async def write_bytes(
        self, writer: AbstractStreamWriter, conn: Connection, content_length: int | None = None
    ) -> None:
        if self._exact_head and isinstance(writer, StreamWriter) and writer._headers_buf:
            status_line = writer._headers_buf.partition(b"\r\n")[0].decode("ascii")
            # A control character is refused by the server's parser before it gets here; should
            # one come, aiohttp's own (lossy) head goes out rather than a broken one.
            with contextlib.suppress(ValueError):
                writer._headers_buf = raw_head(status_line, self.headers)
        await super().write_bytes(writer, conn, content_length)


async def _write_headers_exactly(
    response: web.StreamResponse,
    untyped: bool,
    raw_bytes: bool,
    write_headers: Callable[[], Awaitable[None]],
) -> None:
    headers = response.headers
    if untyped:
        headers.popall("Content-Type", None)
    if not raw_bytes:
        await write_headers()
        return
    request = response._req
    assert request is not None
    writer = cast(StreamWriter, response._payload_writer)
    version = request.version
    status_line = f"HTTP/{version[0]}.{version[1]} {response.status} {response.reason}"
    writer._headers_buf = raw_head(status_line, headers)
    writer._headers_written = False
    if response._send_headers_immediately:
        writer.send_headers()


class RelayedStream(web.StreamResponse):
    """A streamed (or bodiless) response with the backend's headers, exactly."""

    def __init__(
        self, *, status: int, reason: str | None, headers: CIMultiDict[str], raw_bytes: bool
    ) -> None:
        # The proxy built `headers` for this response alone: taken as they are, not copied (a
        # held event stream would otherwise keep two copies for its whole life).
        super().__init__(status=status, reason=reason, _real_headers=headers)
        self._untyped = "Content-Type" not in headers
        self._raw_bytes = raw_bytes

    async def _write_headers(self) -> None:
        await _write_headers_exactly(self, self._untyped, self._raw_bytes, super()._write_headers)


class RelayedBody(web.Response):
    """A response whose whole body is in hand, written at once, with the backend's headers."""

    def __init__(
        self,
        *,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        body: bytes,
        raw_bytes: bool,
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers, body=body)
        self._untyped = "Content-Type" not in headers
        self._raw_bytes = raw_bytes

    async def _write_headers(self) -> None:
        await _write_headers_exactly(self, self._untyped, self._raw_bytes, super()._write_headers)
