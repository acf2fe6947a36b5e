"""The idle timeout of every streamed response body, kept by one timer for all of them.

Until a response's headers are in, aiohttp's `sock_read` timeout watches the backend's silence:
one timer per connection, cancelled and created again on every packet. For a request that is
fine; for thousands of held event streams it is a live timer each (with its handle and context
copy) and two timer operations per event. Once a body is being streamed, this watch takes over:
every quarter of the idle timeout one sweep looks at how many bytes each body has received
since the last sweep, and fails the read of any that received none for the idle timeout, as
aiohttp's own timeout would. A stream is thereby cut between `idle` and one and a half times `idle`
after its backend fell silent, never sooner. Event streams the proxy relays with its own protocol
(`_event_stream.py`) are watched the same way; they never had a timer of their own.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp


class OwnStream(Protocol):
    """A body relayed by the proxy's own protocol (`_event_stream.py`) rather than aiohttp's."""

    @property
    def total_bytes(self) -> int: ...

    def went_silent(self) -> None: ...


Watched = aiohttp.StreamReader | OwnStream


class IdleStreams:
    __slots__ = ("_handle", "_idle", "_loop", "_streams")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle: float) -> None:
        self._loop = loop
        self._idle = idle
        # Each body being streamed: bytes received when last seen, and since when that count.
        self._streams: dict[Watched, tuple[int, float]] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def watch(self, upstream: aiohttp.ClientResponse) -> None:
        """Watch `upstream`'s body from now on instead of aiohttp's per-connection timer. A
        body already complete (its connection released) needs no watching."""
        connection = upstream.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is None:
            return
        # aiohttp sets it again for the connection's next request; `start_timeout` with no
        # timeout cancels the timer it armed for the last packet and arms none.
        protocol.read_timeout = None
        protocol.start_timeout()
        content = upstream.content
        self._streams[content] = (content.total_bytes, self._loop.time())
        if self._handle is None:
            self._schedule()

    def forget(self, upstream: aiohttp.ClientResponse) -> None:
        self._streams.pop(upstream.content, None)

    def watch_own(self, stream: OwnStream) -> None:
        """Watch a body the proxy's own protocol relays (it has no timer of its own)."""
        self._streams[stream] = (stream.total_bytes, self._loop.time())
        if self._handle is None:
            self._schedule()

    def forget_own(self, stream: OwnStream) -> None:
        self._streams.pop(stream, None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._handle = self._loop.call_later(self._idle / 4, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = self._loop.time()
        streams = self._streams
        for stream, (seen, since) in list(streams.items()):
            received = stream.total_bytes
            if received != seen:
                streams[stream] = (received, now)
            elif now - since >= self._idle:
                del streams[stream]
                if isinstance(stream, aiohttp.StreamReader):
                    stream.set_exception(aiohttp.SocketTimeoutError("the backend went silent"))
                else:
                    stream.went_silent()
        if streams:
            self._schedule()
