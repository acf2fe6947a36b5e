"""Event streams relayed below aiohttp: one small protocol object per held stream.

A page watching a video's progress holds one server-sent-events stream for minutes, and thousands
of pages hold thousands. Through aiohttp's client each held stream keeps about 10 KiB of objects
(the parsed response and its request, the connection's bookkeeping, a `StreamReader` with its
deques, a chain of coroutines resumed on every event). So a request that asks for an event stream
(`wants_event_stream`) is sent on a connection of its own, driven by `EventStream`: httptools
parses the response head, and once that has gone to the client, the body's bytes are written to
the client's transport from the protocol's callback as they came (a chunked body stays chunked;
`_framing.py` only finds where it ends), with no task, no reader, no parser and no coroutine per
event. The handler waits on one future for the end.

Everything before the body is the proxy's ordinary path (attempts, retries, the breaker, the
connection slots, errors, headers): `open_event_stream` fails the way aiohttp's `request` does, and
an `EventStream` answers what the proxy asks of a response (`status`, `headers`, `release`...). A
connection is never reused: a stream lasts minutes, a new loopback connection costs microseconds.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

import aiohappyeyeballs
import aiohttp
import httptools
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sora2.proxy._forward import ClientGone, StreamBroken
from sora2.proxy._framing import MAX_LINE_BYTES, BodyFraming
from sora2.proxy._idle import IdleStreams
from sora2.proxy._relay import raw_head

# aiohttp's client limits (with MAX_LINE_BYTES), so that a response refused on one path is
# refused on the other.
MAX_HEADERS = 128
MAX_HEAD_BYTES = MAX_HEADERS * (MAX_LINE_BYTES + 2)
# The client's socket buffer above which the backend is no longer read (it is not reading),
# and below which reading resumes.
HIGH_WATER_BYTES = 64 * 1024
LOW_WATER_BYTES = 16 * 1024
# How often a stream whose client stopped reading looks again (only such streams do).
DRAIN_POLL_SECONDS = 0.05
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def wants_event_stream(request: web.Request) -> bool:
    """A browser's `EventSource` (or anything asking for `text/event-stream`) on HTTP/1.1,
    without a body: such requests are held open for minutes, so they take the lean relay."""
    return (
        request.method == "GET"
        and request.version >= (1, 1)
        and not request.body_exists
        and "text/event-stream" in request.headers.get("Accept", "")
    )


class InvalidHead(Exception):
    """A response head the proxy cannot pass on (a header over aiohttp's limits, bad syntax):
    the same request would get it again, so it is neither retried nor held against the backend."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def open_event_stream(
    loop: asyncio.AbstractEventLoop,
    url: URL,
    headers: CIMultiDict[str],
    *,
    connect_timeout: float,
    idle_timeout: float,
) -> EventStream:
    """Connect to `url`'s host, send a GET for it and wait for the response head. Fails as
    aiohttp's client would: `ConnectionTimeoutError` (the TCP connect took too long),
    `ClientConnectorError` (refused, unreachable, unknown host), `TimeoutError` (silent for
    `idle_timeout` once sent), `ServerDisconnectedError` or `ConnectionResetError` (gone before
    answering), `InvalidHead`."""
    host, port = url.raw_host or "", url.port or 80
    if "Host" not in headers:
        headers = CIMultiDict(headers)
        headers["Host"] = url.host_port_subcomponent or host  # `[::1]:3101`, as aiohttp sends
    head = raw_head(f"GET {url.raw_path_qs} HTTP/1.1", headers)
    stream = EventStream(loop)
    try:
        await _connect(loop, stream, host, port, connect_timeout)
        stream.send(head)
        await _head_of(stream, idle_timeout)
    except BaseException:  # the deadline, the client leaving: the connection goes too
        stream.abandon()
        raise
    return stream


async def _connect(
    loop: asyncio.AbstractEventLoop, stream: EventStream, host: str, port: int, timeout: float
) -> None:
    """The TCP connect as aiohttp makes it: every address of `host` tried (happy eyeballs), the
    timeout on the connect alone, "refused" when every address refused."""
    key = ConnectionKey(host, port, False, True, None, None, None)
    try:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise aiohttp.ClientConnectorDNSError(key, error) from None
    try:
        async with asyncio.timeout(timeout):
            sock = await aiohappyeyeballs.start_connection(
                addresses, happy_eyeballs_delay=0.25, loop=loop
            )
    except TimeoutError:
        raise aiohttp.ConnectionTimeoutError(
            f"Connection timeout to host http://{host}:{port}"
        ) from None
    except OSError as error:
        raise aiohttp.ClientConnectorError(key, error) from None
    try:
        await loop.create_connection(lambda: stream, sock=sock)
    except BaseException:
        sock.close()
        raise


async def _head_of(stream: EventStream, idle_timeout: float) -> None:
    """Wait for the response head; silence for `idle_timeout` is a `TimeoutError`. The timer
    starts again with every packet of the head, as aiohttp's `sock_read` does."""
    head = stream.head_received
    assert head is not None
    while True:
        received = stream.total_bytes
        done, _ = await asyncio.wait((head,), timeout=idle_timeout)
        if done:
            head.result()
            return
        if stream.total_bytes == received:
            raise TimeoutError


def _end_of_head(data: bytes) -> int:
    """Where the head in `data` ends (after its empty line), or -1: not complete yet. Bare LF
    line ends are accepted too, as aiohttp's parser accepts them."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    ends = [found + size for found, size in ((crlf, 4), (lf, 2)) if found >= 0]
    return min(ends) if ends else -1


class EventStream(asyncio.Protocol):
    """One upstream connection: its response head as the proxy reads it, then its body copied
    to the client as it arrives (`relay`)."""

    __slots__ = (
        "_count_bytes",
        "_counted",
        "_done",
        "_downstream",
        "_early",
        "_failure",
        "_frame_pieces",
        "_framing",
        "_head",
        "_header_count",
        "_idle",
        "_loop",
        "_paused_since",
        "_raw_headers",
        "_send_timeout",
        "_transport",
        "complete",
        "head_received",
        "headers",
        "reason",
        "status",
        "total_bytes",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._head = b""  # the response head, until it is complete
        self._raw_headers: list[tuple[str, str]] = []
        self._header_count = 0
        self._framing: BodyFraming | None = None
        self._early: list[bytes] | None = []  # body that came before the relay started
        self._downstream: asyncio.Transport | None = None
        self._frame_pieces = False
        self._count_bytes: Callable[[int], None] | None = None
        self._counted = 0
        self._send_timeout = 0.0
        self._paused_since = 0.0
        self._idle: IdleStreams | None = None
        self._done: asyncio.Future[None] | None = None
        self._failure: Exception | None = None  # how the body ended before the relay began
        self.head_received: asyncio.Future[None] | None = loop.create_future()
        self.status = 0
        self.reason = ""
        self.headers = _NO_HEADERS
        self.complete = False
        self.total_bytes = 0

    # -- what the proxy asks of a response ---------------------------------------------------

    @property
    def content_length(self) -> int | None:
        length = self.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None

    async def read(self) -> bytes:
        """The whole body of a response that is `complete` already."""
        return b"".join(self._early or ())

    def release(self) -> None:
        """Close the connection (never reused), whatever state the response is in."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abandon(self) -> None:
        """Close the connection of a request given up before its head was read: nobody waits
        for the head any more, so how it would have ended is not an error to report."""
        head, self.head_received = self.head_received, None
        if head is not None and head.done() and not head.cancelled():
            head.exception()  # retrieved: asyncio would log it as never retrieved
        self.release()

    def relay(
        self,
        response: web.StreamResponse,
        *,
        count_bytes: Callable[[int], None],
        send_timeout: float,
        idle: IdleStreams,
    ) -> asyncio.Future[None]:
        """Copy the rest of the body to `response`'s client, whose head has gone. The future
        ends when the body is complete; with `StreamBroken` if the backend breaks off or falls
        silent (`idle`, the shared sweep, calls `went_silent`), with `ClientGone` if the client
        leaves or stops reading for `send_timeout`. A plain future, not a coroutine: a held
        stream keeps no frame of its own."""
        done = self._done = self._loop.create_future()
        request = response._req
        writer = response._payload_writer
        framing = self._framing
        assert request is not None
        assert framing is not None
        downstream = request.transport
        if downstream is None or downstream.is_closing():
            done.set_exception(ClientGone())
            self.release()
            return done
        assert isinstance(writer, StreamWriter)
        if framing.chunked and not writer.chunked:
            # Only if something between the proxy and aiohttp gave the answer a length.
            done.set_exception(StreamBroken("a chunked body cannot go out with a length"))
            self.release()
            return done
        self._downstream = downstream
        # A chunked body goes on as it came; other bodies to a chunked answer get framed.
        self._frame_pieces = writer.chunked and not framing.chunked
        self._count_bytes = count_bytes
        self._send_timeout = send_timeout
        # Relayed already: nothing needs them any more, nor the head's future.
        self.headers = _NO_HEADERS
        self.head_received = None
        early, self._early = self._early or [], None
        for piece in early:
            self._write(piece)
        if self.complete or self._failure is not None:
            self._finish(self._failure)
        elif not done.done():
            self._idle = idle
            idle.watch_own(self)
        return done

    def went_silent(self) -> None:
        """The shared idle sweep saw no byte for the idle timeout. While the backend is not
        read because the client is not reading, the silence is the client's: `_check_drained`
        decides (ClientGone), not the sweep."""
        if not self._paused_since:
            self._finish(StreamBroken("idle timeout"))

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an `asyncio.Transport` subclass: no isinstance).
        self._transport = cast(asyncio.Transport, transport)

    def send(self, head: bytes) -> None:
        assert self._transport is not None
        self._transport.write(head)

    def data_received(self, data: bytes) -> None:
        if self._framing is None:
            self._read_head(data)
            return
        self.total_bytes += len(data)
        framing = self._framing
        piece = framing.feed(data)
        if piece:
            if self._downstream is not None:
                self._write(piece)
            elif self._early is not None:
                self._early.append(piece)
        if framing.invalid:
            self._finish(StreamBroken(f"truncated body: {framing.invalid}"))
        elif framing.done:
            self.complete = True
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.head_received is not None and not self.head_received.done():
            self.head_received.set_exception(
                exc if exc is not None else aiohttp.ServerDisconnectedError()
            )
        elif not self.complete:
            self._end_of_connection(exc)

    def pause_writing(self) -> None:  # a GET's head is all we write: nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # -- the head ------------------------------------------------------------------------------

    def _read_head(self, data: bytes) -> None:
        """Collect the head; once whole, parse it (httptools, for this moment only) and treat
        what followed it as body. Informational heads (1xx) are skipped, as aiohttp does."""
        self.total_bytes += len(data)
        head = self._head + data
        while True:
            end = _end_of_head(head)
            if end < 0:
                if len(head) > MAX_HEAD_BYTES:
                    self._refuse(f"a response head over {MAX_HEAD_BYTES} bytes")
                self._head = head
                return
            status = self._parse_head(head[:end])
            head = head[end:]
            if not 100 <= status < 200:
                break
            # An informational head (103 Early Hints...): skipped, as aiohttp does.
            self._raw_headers.clear()
            self._header_count = 0
            self.reason = ""
        self._head = b""
        if status:
            self._start_body(status)
            if head:
                self.data_received(head)

    def _parse_head(self, head: bytes) -> int:
        """Parse one head (httptools, for this moment only); its status, or 0 if refused."""
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)  # as aiohttp's parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._refuse(f"invalid response: {type(error).__name__}: {error}")
            return 0
        if self.head_received is None or self.head_received.done():
            return 0  # refused (a header over the limits)
        return parser.get_status_code()

    def _start_body(self, status: int) -> None:
        headers = CIMultiDict(self._raw_headers)
        self._raw_headers = []
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        codings = ",".join(headers.getall("Transfer-Encoding", ())).lower()
        if status in (204, 304):
            self._framing = BodyFraming(chunked=False, length=0)
        else:
            self._framing = BodyFraming(
                chunked=codings.rstrip().endswith("chunked"), length=self.content_length
            )
        self.complete = self._framing.done
        assert self.head_received is not None
        self.head_received.set_result(None)

    # -- httptools callbacks, for the head only ----------------------------------------------

    def on_status(self, reason: bytes) -> None:
        if len(reason) > MAX_LINE_BYTES:
            self._refuse("status line too long")
        self.reason = reason.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if len(name) + len(value) > MAX_LINE_BYTES or self._header_count > MAX_HEADERS:
            self._refuse(f"a header over the limit of {MAX_LINE_BYTES} bytes or {MAX_HEADERS}")
            return
        self._raw_headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    # -- the copy ------------------------------------------------------------------------------

    def _refuse(self, why: str) -> None:
        if self.head_received is not None and not self.head_received.done():
            self.head_received.set_exception(InvalidHead(why))
        self.release()

    def _write(self, piece: bytes) -> None:
        downstream = self._downstream
        assert downstream is not None
        if downstream.is_closing():
            self._finish(ClientGone())
            return
        if self._frame_pieces:
            downstream.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
        else:
            downstream.write(piece)
        assert self._count_bytes is not None
        assert self._framing is not None
        payload = self._framing.payload
        self._count_bytes(payload - self._counted)
        self._counted = payload
        if not self._paused_since and downstream.get_write_buffer_size() > HIGH_WATER_BYTES:
            # The client is not reading: stop reading the backend until it does.
            self._paused_since = self._loop.time()
            if self._transport is not None:
                self._transport.pause_reading()
            self._loop.call_later(DRAIN_POLL_SECONDS, self._check_drained)

    def _check_drained(self) -> None:
        downstream = self._downstream
        if self._done is None or self._done.done() or downstream is None:
            return
        if downstream.is_closing():
            self._finish(ClientGone())
        elif downstream.get_write_buffer_size() <= LOW_WATER_BYTES:
            self._paused_since = 0.0
            if self._transport is not None:
                self._transport.resume_reading()
        elif self._loop.time() - self._paused_since >= self._send_timeout:
            self._finish(ClientGone())
        else:
            self._loop.call_later(DRAIN_POLL_SECONDS, self._check_drained)

    def _end_of_connection(self, exc: Exception | None) -> None:
        framing = self._framing
        if exc is None and framing is not None and framing.ends_with_connection:
            self.complete = True  # a body framed by the connection's end ends with it
            self._finish(None)
        else:
            cause = f": {exc}" if exc is not None else ""
            self._finish(StreamBroken(f"truncated body: the backend closed the connection{cause}"))

    def _finish(self, outcome: Exception | None) -> None:
        """End the body: None when complete, else the error the relay's future ends with."""
        done = self._done
        if done is None:
            self._failure = self._failure or outcome
        elif not done.done():
            if outcome is None:
                done.set_result(None)
            else:
                done.set_exception(outcome)
        if self._idle is not None:
            self._idle.forget_own(self)
            self._idle = None
        if outcome is not None or self.complete:
            self.release()
