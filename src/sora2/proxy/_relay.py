"""Responses that carry the backend's headers exactly as they came.

aiohttp's server adds `Content-Type: application/octet-stream` to any body without one and
writes header values as UTF-8, dropping bytes that are not (aiohttp's client hands them over as
surrogate escapes). A proxy must add nothing and lose nothing, so the two response classes here
remove an invented `Content-Type` and, when a header carries such bytes, write the head
themselves with the bytes restored. Both hook `_write_headers`, the one step between aiohttp
settling the headers and sending them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web
from aiohttp.http_writer import StreamWriter
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


def _raw_head(status_line: str, headers: CIMultiDict[str]) -> bytes:
    lines = [status_line]
    for name, value in headers.items():
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            raise ValueError("control character in a response header")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


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
    writer._headers_buf = _raw_head(status_line, headers)
    writer._headers_written = False
    if response._send_headers_immediately:
        writer.send_headers()


class RelayedStream(web.StreamResponse):
    """A streamed (or bodiless) response with the backend's headers, exactly."""

    def __init__(
        self, *, status: int, reason: str | None, headers: CIMultiDict[str], raw_bytes: bool
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
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
