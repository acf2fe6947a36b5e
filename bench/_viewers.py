"""Thousands of viewers of `/events` streams in one process: a lean client for the streams bench.

A viewer is an asyncio protocol with httptools parsing the response (chunked or not); it keeps
only the time each progress value first arrived. An aiohttp session per viewer would cost the
client more memory and CPU than the servers it measures.
"""

from __future__ import annotations

import asyncio
import math
import re
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

PROGRESS_ID = re.compile(rb"id: in_progress-(\d+)\n")
FIRST_EVENT = b"id: "
TAIL_BYTES = 64  # longer than any event id line: a line split between two reads still matches


@dataclass(eq=False)
class Viewer(asyncio.Protocol):
    """One `GET …/events` kept open; `arrivals[p]` is when progress `p` first arrived."""

    host: str
    path: str
    token: str
    status: int | None = None
    opened: asyncio.Future[None] | None = None
    arrivals: dict[int, float] = field(default_factory=dict)
    closed: bool = False
    _tail: bytes = b""
    _transport: asyncio.Transport | None = None
    _parser: httptools.HttpResponseParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._parser = httptools.HttpResponseParser(self)
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.fail(error)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        if self.status != 200:
            self.fail(RuntimeError(f"HTTP {self.status}"))

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        text = self._tail + body
        if self.opened is not None and not self.opened.done() and FIRST_EVENT in text:
            self.opened.set_result(None)
        for match in PROGRESS_ID.finditer(text):
            self.arrivals.setdefault(int(match.group(1)), now)
        self._tail = text[-TAIL_BYTES:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(exc or ConnectionResetError("the stream ended"))

    def fail(self, error: BaseException) -> None:
        """The stream could not open: `held` stays False."""
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(error)

    @property
    def held(self) -> bool:
        opened = self.opened
        return opened is not None and opened.done() and opened.exception() is None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _connect(viewer: Viewer, port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: viewer, "127.0.0.1", port)
    except (OSError, TimeoutError) as error:
        viewer.fail(error)


async def open_viewers(
    port: int, streams: Sequence[tuple[str, str]], *, wave: int, timeout: float
) -> list[Viewer]:
    """One viewer per (path, token), connecting `wave` at a time as visitors arriving in a rush;
    returns once every stream has sent its first event, or `timeout` passed (those failed)."""
    loop = asyncio.get_running_loop()
    viewers = [
        Viewer(f"127.0.0.1:{port}", path, token, opened=loop.create_future())
        for path, token in streams
    ]
    deadline = loop.time() + timeout
    for start in range(0, len(viewers), wave):
        batch = viewers[start : start + wave]
        await asyncio.gather(*(_connect(viewer, port, timeout) for viewer in batch))
    waiting = [viewer.opened for viewer in viewers if viewer.opened and not viewer.opened.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()))
    for viewer in viewers:
        if not viewer.held:
            viewer.fail(TimeoutError("no first event in time"))
            viewer.close()
    return viewers


def delivery_seconds(viewers: Sequence[Viewer], progress: int, sent_at: float) -> list[float]:
    """How long progress `progress` took to reach each viewer (infinity: it never did)."""
    return sorted(
        viewer.arrivals[progress] - sent_at if progress in viewer.arrivals else math.inf
        for viewer in viewers
    )


def percentile(ordered: Sequence[float], share: float) -> float:
    """The value `share` of `ordered` (sorted) stay at or below; nearest rank."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def raise_open_file_limit() -> int:
    """The client holds a socket per viewer: raise its soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
