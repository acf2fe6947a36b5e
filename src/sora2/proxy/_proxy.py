"""The resilient reverse proxy: one `Proxy` per backend (or set of backends), `handle()` per
request.

The life of a request: reject what must never be forwarded (unsafe path, foreign origin writing,
oversized body) → choose a backend, or fail fast if it (every one) is known down → attempt,
retrying only when that is safe (on another backend when there is one), all within one deadline
→ pass the backend's answer through, streamed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sora2.proxy._backends import Backend, Backends, Tried
from sora2.proxy._circuit import CircuitBreaker, CircuitState
from sora2.proxy._config import ProxyConfig
from sora2.proxy._cors import CorsDecision, CorsPolicy
from sora2.proxy._deadline import Deadline
from sora2.proxy._errors import Failure, ProxyError, error_response
from sora2.proxy._event_stream import (
    EventStream,
    InvalidHead,
    open_event_stream,
    wants_event_stream,
)
from sora2.proxy._forward import (
    BUFFERED_RESPONSE_BYTES,
    BodyStalled,
    BodyTooLarge,
    ClientGone,
    RequestBody,
    StreamBroken,
    StreamedBody,
    has_no_body,
    read_request_body,
    read_small_body,
    stream_body,
)
from sora2.proxy._headers import (
    downstream_response_headers,
    request_id_from,
    upstream_request_headers,
)
from sora2.proxy._health import HealthMonitor
from sora2.proxy._idle import IdleStreams
from sora2.proxy._metrics import ProxyMetrics
from sora2.proxy._paths import UnsafePath, checked_upstream_path
from sora2.proxy._pool import ConnectionSlots
from sora2.proxy._redact import redact_query
from sora2.proxy._relay import ExactRequest, RelayedBody, RelayedStream
from sora2.proxy._retry import (
    RETRYABLE_STATUSES,
    RetryBudget,
    backoff_delay,
    is_idempotent,
    parse_retry_after,
)
from sora2.proxy._tunnel import (
    ClientBytes,
    handshake_head,
    is_websocket_upgrade,
    parse_response_head,
    pipe,
    read_response_head,
)

logger = logging.getLogger("sora2.proxy")

# A backend's answer: through aiohttp's client, or an event stream on the proxy's own protocol.
Upstream = aiohttp.ClientResponse | EventStream

# aiohttp's client adds Accept, Accept-Encoding, User-Agent and Content-Type when they are absent;
# a proxy must forward the client's headers as they are (an added Accept-Encoding would get the
# client a compressed body it never asked for). `skip_auto_headers` does this at a cost of a
# sort and two header copies per request, so the request class declares it once instead.
# tests/proxy/test_headers.py checks that nothing is added, should aiohttp change.
_NO_AUTO_HEADERS: CIMultiDict[None] = CIMultiDict(
    (name, None) for name in ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
)


class _ForwardingRequest(ExactRequest):
    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = _NO_AUTO_HEADERS


# Failures where the backend received nothing: a retry is safe whatever the method.
_NOTHING_SENT = frozenset({"ECONNREFUSED", "ECONNECT", "ENOTFOUND", "ECONNTIMEOUT"})
# A retry wait meaning "until the starting backend answers its health check".
_UNTIL_UP = -1.0


@dataclass(slots=True)
class _Exchange:
    """What one request carries through the proxy."""

    method: str
    request_id: str
    started: float
    deadline: float
    cors: CorsDecision = field(default_factory=CorsDecision)
    idempotent: bool = False
    event_stream: bool = False
    """An event stream is asked for: it goes on the proxy's own protocol (_event_stream.py)."""
    body: RequestBody = None
    attempts: int = 0
    holds_retry_budget: bool = False
    holds_slot: bool = False
    waiting_for_slot: bool = False
    probe: bool = False
    """This request is the circuit's half-open probe."""
    answered_at: float = 0.0
    """When a streamed response's headers went out (perf_counter); 0 until then."""
    truncated: bool = False
    """The response body was cut off: the backend broke off or went silent mid-way."""
    waiting_for_start: ProxyError | None = None
    """The failure a request is holding on to while it waits for a starting backend."""
    backend: Backend | None = None
    """The backend it is using now (chosen once the request has passed the proxy's checks)."""
    tried: Tried | None = None
    """With several backends: each one tried or passed over, and what happened there."""

    @property
    def body_started(self) -> bool:
        return isinstance(self.body, StreamedBody) and self.body.started


class Proxy:
    """Forwards `{public_prefix}/{path}?{query}` to `{api_url}{upstream_prefix}/{path}?{query}`."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        public_prefix: str = "/api/proxy",
        metrics: ProxyMetrics | None = None,
        request_id_var: contextvars.ContextVar[str] | None = None,
    ) -> None:
        """`request_id_var`, when given, holds each request's id while it is handled, so the
        application's log lines (and its log format) can name it."""
        self.config = config
        self._request_id_var = request_id_var
        self.public_prefix = public_prefix.rstrip("/")
        self.metrics = metrics or ProxyMetrics()
        self.cors = CorsPolicy(
            config.allowed_origins,
            allowed_headers=config.cors_allowed_headers,
            trusted_proxies=config.trusted_proxies,
        )
        self._pool = Backends(
            config, on_circuit_change=self._circuit_changed, restart_window=self._restart_window
        )
        self.backends = self._pool.all
        self.metrics.watch(self.backends)
        self._several = self._pool.several
        # With several backends, a request that may go again elsewhere waits this long for
        # one backend's response headers (see BalancePolicy.try_timeout).
        self._try_timeout = (
            (config.balance.try_timeout or config.timeouts.request / config.retries.max_attempts)
            if self._several
            else None
        )
        self.budget = RetryBudget(
            ratio=config.retries.budget_ratio, minimum=config.retries.budget_min
        )
        self._session: aiohttp.ClientSession | None = None
        self._health_session: aiohttp.ClientSession | None = None
        self._slots: ConnectionSlots | None = None
        self._idle_streams: IdleStreams | None = None
        self._startup_ends = 0.0
        # Set by start(). Kept rather than looked up per request: on Python 3.11 each
        # `asyncio.get_running_loop()` is a getpid system call, and a request needed four.
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._startup_ends = self._loop.time() + self.config.health.startup_grace
        reuse = self.config.pool.keepalive > 0
        # Unbounded here: `ConnectionSlots` holds the limit, so that waiting for a connection is
        # never mistaken for the backend failing to accept one (see _pool.py).
        self._slots = ConnectionSlots(self.config.pool.size, self._loop)
        self._idle_streams = IdleStreams(self._loop, self.config.timeouts.idle)
        connector = aiohttp.TCPConnector(
            limit=0,
            keepalive_timeout=self.config.pool.keepalive if reuse else None,
            force_close=not reuse,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # The proxy serves many users: it must never keep one user's cookies for another.
            cookie_jar=aiohttp.DummyCookieJar(),
            request_class=_ForwardingRequest,
            # The request deadline is a `Deadline` per request; `sock_connect` bounds the TCP
            # connect alone (aiohttp's `connect` would also cover a wait for a pooled
            # connection); `sock_read` is the idle timeout: the longest the backend may stay
            # silent once the request is sent.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=None,
                sock_connect=self.config.timeouts.connect,
                sock_read=self.config.timeouts.idle,
            ),
        )
        # aiohttp re-sends an idempotent request once, silently, when a connection breaks under
        # it. The proxy decides retries itself (and counts them, and spends the budget on them):
        # the attempts it reports must be the attempts the backend saw. aiohttp's own test
        # client turns it off the same way; there is no public switch.
        self._session._retry_connection = False
        # Health checks have a connection of their own: however many streams hold the
        # forwarding connections, a check still reaches the backend at once.
        self._health_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=1, keepalive_timeout=self.config.health.ttl
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        for backend in self.backends:
            health = HealthMonitor(
                session=self._health_session,
                url=backend.url + self.config.health.path,
                ttl=self.config.health.ttl,
                timeout=max(self.config.timeouts.connect, 1.0),
                on_recovered=backend.circuit.reset,
                on_down=self._outlier_handler(backend, "its health check failed"),
            )
            backend.attach(health)

    async def close(self) -> None:
        if self._idle_streams is not None:
            self._idle_streams.close()
        for backend in self.backends:
            await backend.close()
        if self._session is not None:
            await self._session.close()
        if self._health_session is not None:
            await self._health_session.close()

    @property
    def health(self) -> HealthMonitor:
        """The (first) backend's health."""
        return self.backends[0].health

    @property
    def circuit(self) -> CircuitBreaker:
        """The (first) backend's breaker."""
        return self.backends[0].circuit

    @property
    def slots(self) -> ConnectionSlots:
        assert self._slots is not None, "Proxy.start() was not awaited"
        return self._slots

    @property
    def streaming(self) -> int:
        """Response bodies being streamed to clients now."""
        return len(self._idle_streams) if self._idle_streams is not None else 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Proxy.start() was not awaited"
        return self._loop

    def _circuit_changed(self, backend: Backend, state: CircuitState) -> None:
        self.metrics.circuit_state = max(other.circuit.state for other in self.backends)
        if state is CircuitState.OPEN:
            logger.warning("circuit opened: backend %s is failing", backend.url)
            backend.check_soon()
            self._outlier_handler(backend, "its breaker opened")()
        elif state is CircuitState.CLOSED:
            logger.info("circuit closed: backend %s is answering", backend.url)

    def _outlier_handler(self, backend: Backend, why: str) -> Callable[[], None]:
        """Ejects `backend` (when others are in rotation) for `why`."""

        def eject() -> None:
            if self._loop is not None and self._pool.may_eject():
                backend.eject(self._loop.time(), why)

        return eject

    # -- one request -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Durations use perf_counter (uvloop's clock ticks in milliseconds); deadlines use the
        # loop's clock, which is what asyncio's timeouts and sleeps run on.
        started = time.perf_counter()
        exchange = _Exchange(
            method=request.method,
            request_id=request_id_from(request.headers),
            started=started,
            deadline=0.0,  # set once the request body is in hand (see _exchange)
        )
        request_id_var = self._request_id_var
        token = request_id_var.set(exchange.request_id) if request_id_var is not None else None
        self.budget.in_flight += 1
        status = 0
        try:
            try:
                response = await self._exchange(request, exchange)
            except ProxyError as error:
                response = self._error(error, exchange)
            except ClientGone:
                # Nobody is left to answer; end the connection without an error trace.
                request.protocol.force_close()
                return web.Response(status=499)
            status = response.status
            return response
        finally:
            self.budget.in_flight -= 1
            backend = exchange.backend
            if backend is not None:
                backend.outstanding -= 1
                if exchange.probe:  # claimed, then refused before it was sent (too large...)
                    backend.circuit.release_probe()
            finished = time.perf_counter()
            # The histogram is time to the response headers (as its help says); a stream that
            # lasts an hour is one quick answer there, and its whole length is in the log line.
            answered = exchange.answered_at or finished
            self.metrics.count_request(status or 499, answered - started)
            logger.info(
                "%s %s %s%s attempts=%d duration=%.1fms",
                exchange.method,
                self._loggable_path(request),
                status or "client-closed",
                " truncated" if exchange.truncated else "",
                exchange.attempts,
                (finished - started) * 1000,
            )
            if token is not None and request_id_var is not None:
                request_id_var.reset(token)

    def _loggable_path(self, request: web.Request) -> str:
        path, _, query = request.raw_path.partition("?")
        if not query:
            return path
        return f"{path}?{redact_query(query, self.config.loggable_query_names)}"

    def _error(self, error: ProxyError, exchange: _Exchange) -> web.Response:
        backend = exchange.backend
        if exchange.tried:
            error.extra["backends"] = self._pool.details(exchange.tried)
        response = error_response(
            error,
            request_id=exchange.request_id,
            api_url=self.config.api_url if backend is None else backend.url,
            attempts=exchange.attempts,
            duration=time.perf_counter() - exchange.started,
            timeout_ms=round(self.config.timeouts.request * 1000),
            max_body=self.config.max_body_bytes,
            expose_internals=self.config.expose_internals,
            suggestions=self.config.suggestions,
        )
        exchange.cors.apply(response.headers)
        return response

    async def _exchange(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        target = self._upstream_target(request)
        exchange.cors = self.cors.decide(request)
        if exchange.cors.forbidden:
            raise ProxyError(Failure.FORBIDDEN_ORIGIN)
        if exchange.cors.preflight:
            return exchange.cors.preflight_response(exchange.request_id)
        if "Upgrade" in request.headers and is_websocket_upgrade(request.headers):
            return await self._tunnel(request, target, exchange)
        exchange.idempotent = is_idempotent(exchange.method, "Idempotency-Key" in request.headers)
        config = self.config
        if "Transfer-Encoding" in request.headers:
            _refuse_unknown_transfer_coding(request)
        declared = request.content_length
        if declared is not None and declared > config.max_body_bytes:
            raise ProxyError(Failure.TOO_LARGE)
        self._choose_backend(exchange)
        if "Expect" in request.headers:
            # Only now that size, origin and the backend's state are known to be fine is the
            # client told to send its body (mount_proxy keeps aiohttp from saying so earlier).
            await _continue_if_expected(request)
        try:
            exchange.body = await read_request_body(
                request, config.max_body_bytes, config.timeouts.idle
            )
        except BodyTooLarge:
            raise ProxyError(Failure.TOO_LARGE) from None
        except BodyStalled:
            raise self._body_timeout() from None
        exchange.event_stream = exchange.body is None and wants_event_stream(request)
        # The deadline runs from here: a body in hand has been read; a streamed one moves it on
        # as it goes (see _watch_streamed_body), so a long, steady upload is not cut off by it.
        exchange.deadline = self.loop.time() + config.timeouts.request
        try:
            # The headers are built in the call, not kept here: a stream holds this frame for
            # its whole life, and aiohttp's request keeps its own copy of them.
            upstream = await self._send_before_deadline(
                target, self._forwarded_headers(request, exchange, declared), exchange
            )
            try:
                return await self._respond(request, upstream, exchange)
            finally:
                upstream.release()
                self._count_request_bytes(exchange.body)
        finally:
            if exchange.holds_slot:
                self.slots.give_back()

    def _forwarded_headers(
        self, request: web.Request, exchange: _Exchange, declared: int | None
    ) -> CIMultiDict[str]:
        """The upstream headers of a request with a body the proxy may stream on."""
        headers = self._upstream_headers(request, exchange)
        if declared is not None and isinstance(exchange.body, StreamedBody):
            headers["Content-Length"] = str(declared)  # framed as the client framed it
        return headers

    def _upstream_headers(self, request: web.Request, exchange: _Exchange) -> CIMultiDict[str]:
        """The client's headers as the api should see them (forwarding, request id, `Via`)."""
        return upstream_request_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            host=request.host,
            request_id=exchange.request_id,
            trusted=self.config.trusted_proxies,
            via=self.config.via,
        )

    # -- WebSocket upgrades --------------------------------------------------------------

    async def _tunnel(
        self, request: web.Request, target: str, exchange: _Exchange
    ) -> web.StreamResponse:
        """Forward the handshake; on 101, relay bytes both ways until one side closes or both
        are silent for the idle timeout. It holds a pool connection for its whole life."""
        if "Origin" in request.headers and exchange.cors.allowed_origin is None:
            # Browsers apply no CORS to WebSockets: a foreign page could use the user's cookies.
            raise ProxyError(Failure.FORBIDDEN_ORIGIN)
        exchange.deadline = self.loop.time() + self.config.timeouts.request
        self._choose_backend(exchange)
        assert exchange.backend is not None
        url = URL(exchange.backend.upstream_base + target, encoded=True)
        headers = self._upstream_headers(request, exchange)
        try:
            reader, writer, head = await self._handshake(url, headers, exchange)
        except (ProxyError, asyncio.CancelledError):
            if exchange.holds_slot:
                exchange.holds_slot = False
                self.slots.give_back()
            raise
        try:
            return await self._relay_upgrade(request, exchange, reader, writer, head)
        finally:
            writer.close()
            if exchange.holds_slot:
                exchange.holds_slot = False
                self.slots.give_back()

    async def _handshake(
        self, url: URL, headers: CIMultiDict[str], exchange: _Exchange
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        exchange.attempts = 1
        deadline = Deadline(self.loop, exchange.deadline)
        try:
            await self._take_slot(exchange)
            try:
                async with asyncio.timeout(self.config.timeouts.connect):
                    reader, writer = await asyncio.open_connection(url.host, url.port)
            except TimeoutError:
                self._note_failure(exchange, "connect_error")
                raise ProxyError(Failure.TIMEOUT, "ECONNTIMEOUT", backend_failed=True) from None
            except ConnectionRefusedError as error:
                self._note_failure(exchange, "refused")
                raise ProxyError(
                    Failure.REFUSED, "ECONNREFUSED", str(error), 1, backend_failed=True
                ) from None
            except OSError as error:
                self._note_failure(exchange, "connect_error")
                raise ProxyError(
                    Failure.BAD_GATEWAY, "ECONNECT", str(error), backend_failed=True
                ) from None
            writer.write(handshake_head("GET", url.raw_path_qs, url.raw_authority, headers))
            try:
                head = await read_response_head(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                writer.close()
                self._note_failure(exchange, "reset")
                raise ProxyError(
                    Failure.BAD_GATEWAY, "ECONNRESET", type(error).__name__, backend_failed=True
                ) from None
        except asyncio.CancelledError:
            if not deadline.expired:
                self._settle(exchange, backend_failed=None)
                raise
            deadline.absorb()
            raise self._time_is_up(exchange) from None
        except ProxyError as error:
            self._settle(exchange, backend_failed=error.backend_failed)
            raise
        finally:
            deadline.disarm()
        self._count_attempt(exchange, "response")
        exchange.backend.health.note_response()  # type: ignore[union-attr]
        self._settle(exchange, backend_failed=False)
        return reader, writer, head

    async def _relay_upgrade(
        self,
        request: web.Request,
        exchange: _Exchange,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> web.StreamResponse:
        try:
            status, reason, upstream_headers = parse_response_head(head)
        except ValueError as error:
            raise ProxyError(Failure.BAD_GATEWAY, "EBADRESPONSE", str(error)) from None
        headers, raw_bytes = downstream_response_headers(
            CIMultiDictProxy(upstream_headers),
            request_id=exchange.request_id,
            via=self.config.via,
            api_url=exchange.backend.url,  # type: ignore[union-attr]
            upstream_prefix=self.config.upstream_prefix,
            public_prefix=self.public_prefix,
        )
        exchange.cors.apply(headers)
        if status != 101:
            # The backend declined the upgrade: its answer passes through as any answer would.
            length = upstream_headers.get("Content-Length", "0")
            size = int(length) if length.isascii() and length.isdigit() else 0
            body = await reader.readexactly(min(size, BUFFERED_RESPONSE_BYTES))
            headers.popall("Content-Length", None)
            request.protocol.force_close()
            return RelayedBody(
                status=status, reason=reason, headers=headers, body=body, raw_bytes=raw_bytes
            )
        headers["Connection"] = "Upgrade"
        headers["Upgrade"] = "websocket"
        response = RelayedStream(
            status=101, reason=reason or "Switching Protocols", headers=headers, raw_bytes=False
        )
        await response.prepare(request)
        exchange.answered_at = time.perf_counter()
        self.metrics.tunnels += 1
        await self._pipe_until_quiet(request, reader, writer)
        request.protocol.force_close()
        return response

    async def _pipe_until_quiet(
        self, request: web.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        transport = request.transport
        assert transport is not None
        client = ClientBytes(transport)
        request.protocol.set_parser(client)  # type: ignore[arg-type]
        loop = self.loop
        idle = self.config.timeouts.idle
        quiet = Deadline(loop, loop.time() + idle)
        metrics = self.metrics

        def upstream_bytes(count: int) -> None:
            metrics.bytes_in += count
            quiet.move_to(loop.time() + idle)

        def downstream_bytes(count: int) -> None:
            metrics.bytes_out += count
            quiet.move_to(loop.time() + idle)

        async def to_backend(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def to_client(data: bytes) -> None:
            transport.write(data)
            await request.writer.drain()

        async def from_backend() -> bytes:
            return await reader.read(65536)

        try:
            # Whichever side closes first ends the tunnel; the other direction is cancelled.
            sides = [
                loop.create_task(pipe(client.read, to_backend, upstream_bytes)),
                loop.create_task(pipe(from_backend, to_client, downstream_bytes)),
            ]
            try:
                await asyncio.wait(sides, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for side in sides:
                    side.cancel()
                await asyncio.gather(*sides, return_exceptions=True)
        except asyncio.CancelledError:
            if not quiet.expired:
                raise
            quiet.absorb()  # both sides silent for the idle timeout
        finally:
            quiet.disarm()

    def _body_timeout(self) -> ProxyError:
        idle_ms = round(self.config.timeouts.idle * 1000)
        return ProxyError(Failure.BODY_TIMEOUT, "EBODYTIMEOUT", extra={"idleTimeout": idle_ms})

    def _count_request_bytes(self, body: RequestBody) -> None:
        if isinstance(body, StreamedBody):
            self.metrics.bytes_in += body.sent
        elif body:
            self.metrics.bytes_in += len(body)

    def _upstream_target(self, request: web.Request) -> str:
        """`{upstream_prefix}/{path}?{query}` less the backend's address, once checked."""
        target = request.raw_path
        if not target.startswith("/"):
            target = _origin_form(target)
        path, _, query = target.partition("?")
        prefix = self.public_prefix
        if not (path == prefix or path.startswith(prefix + "/")):
            raise ProxyError(Failure.BAD_PATH, detail="a path outside the proxy prefix")
        tail = path[len(prefix) :]
        try:
            checked_upstream_path(tail)
        except UnsafePath as unsafe:
            raise ProxyError(Failure.BAD_PATH, detail=unsafe.reason) from None
        return tail + "?" + query if query else tail

    def _choose_backend(self, exchange: _Exchange) -> None:
        """The backend for this request; 503 at once when it (or every one) is known down,
        instead of piling requests onto it."""
        if not self._several:
            backend = self.backends[0]
            refusal = self._pool.refusal(backend, strict=False, now=self.loop.time())
            if refusal is not None:
                self.metrics.fail_fast += 1
                raise refusal
        else:
            exchange.tried = []
            chosen = self._pool.pick(exclude=(), passed_over=exchange.tried, now=self.loop.time())
            if chosen is None:
                self.metrics.fail_fast += 1
                raise self._pool.none_available(exchange.tried)
            backend = chosen
            exchange.tried.clear()  # only backends actually tried are reported from here on
        self._use(exchange, backend)

    def _use(self, exchange: _Exchange, backend: Backend) -> None:
        exchange.backend = backend
        backend.outstanding += 1
        exchange.probe = backend.circuit.state is CircuitState.HALF_OPEN

    # -- attempts and retries --------------------------------------------------------------

    async def _send_before_deadline(
        self, target: str, headers: CIMultiDict[str], exchange: _Exchange
    ) -> Upstream:
        """All attempts, within the deadline. Whatever happens, the breaker hears one verdict on
        the backend for the whole request (see `_settle`), and a retry-budget slot is given back
        as soon as the response headers are in: a long stream must not hold one."""
        deadline = Deadline(self.loop, exchange.deadline)
        if isinstance(exchange.body, StreamedBody):
            self._watch_streamed_body(exchange.body, deadline, exchange)
        try:
            await self._take_slot(exchange)
            upstream = await self._send_with_retries(target, headers, exchange)
        except asyncio.CancelledError:
            if not deadline.expired:
                self._settle(exchange, backend_failed=None)  # the client left: it tells nothing
                raise
            deadline.absorb()
        except ProxyError as error:
            self._settle(exchange, backend_failed=error.backend_failed)
            raise
        else:
            self._settle(exchange, backend_failed=False)  # the backend answered
            return upstream
        finally:
            deadline.disarm()
            if exchange.holds_retry_budget:
                exchange.holds_retry_budget = False
                self.budget.release()
        raise self._time_is_up(exchange)

    def _time_is_up(self, exchange: _Exchange) -> ProxyError:
        """The deadline passed: whose fault it was decides the answer and the breaker's verdict."""
        if exchange.waiting_for_start is not None:
            self._settle(exchange, backend_failed=None)
            return exchange.waiting_for_start  # the backend never came up in time
        if exchange.waiting_for_slot:
            self._settle(exchange, backend_failed=None)  # the proxy's own congestion
            self.metrics.pool_timeouts += 1
            return ProxyError(
                Failure.SATURATED,
                "EPOOLWAIT",
                retry_after=1,
                extra={"poolSize": self.config.pool.size},
            )
        body = exchange.body
        if isinstance(body, StreamedBody) and body.awaiting_client:
            self._settle(exchange, backend_failed=None)  # the client stalled, not the backend
            return self._body_timeout()
        self._count_attempt(exchange, "timeout")
        if self._several:
            self._note_outcome(exchange, "ETIMEDOUT", failed=True)
        self._settle(exchange, backend_failed=True)
        return ProxyError(Failure.TIMEOUT, "ETIMEDOUT")

    def _settle(self, exchange: _Exchange, *, backend_failed: bool | None) -> None:
        """Tell the breaker, once per client request, what this request learnt of the backend:
        it answered (any status: one route's 503 says nothing of the others), it failed (could
        not be reached, reset, stayed silent), or nothing (None: the client left or stalled,
        the proxy was congested, the response was one no retry would fix)."""
        backend = exchange.backend
        assert backend is not None
        circuit = backend.circuit
        if backend_failed and (not backend.health.ever_up or self._restart_window() > 0):
            backend_failed = None  # its start-up, or a restart on purpose: not an outage
        if backend_failed is None:
            if exchange.probe:
                circuit.release_probe()
        elif backend_failed:
            circuit.record_failure()
        elif circuit.state is not CircuitState.CLOSED or circuit.consecutive_failures:
            circuit.record_success()
        exchange.probe = False

    async def _take_slot(self, exchange: _Exchange) -> None:
        """Hold one of the pool's connections for this request; a wait is ours, not the
        backend's (see _pool.py), and it ends with the request's deadline at the latest."""
        slots = self.slots
        if slots.busy < slots.limit and not slots.waiting:
            slots.busy += 1
        else:
            exchange.waiting_for_slot = True
            await slots.take()
            exchange.waiting_for_slot = False
        exchange.holds_slot = True

    def _watch_streamed_body(
        self, body: StreamedBody, deadline: Deadline, exchange: _Exchange
    ) -> None:
        """While a streamed body is being sent, the deadline is the idle timeout from the last
        chunk; once it has all gone, the request deadline starts."""
        loop = self.loop
        config = self.config

        def progress() -> None:
            deadline.move_to(loop.time() + config.timeouts.idle)

        def sent() -> None:
            exchange.deadline = loop.time() + config.timeouts.request
            deadline.move_to(exchange.deadline)

        body.on_progress = progress
        body.on_sent = sent

    async def _send_with_retries(
        self, target: str, headers: CIMultiDict[str], exchange: _Exchange
    ) -> Upstream:
        loop = self.loop
        several = self._several
        while True:
            exchange.attempts += 1
            if exchange.attempts > 1:
                self.metrics.retries += 1
            backend = exchange.backend
            assert backend is not None
            try:
                upstream = await self._attempt(target, headers, exchange)
            except ProxyError as error:
                if several:
                    self._note_outcome(exchange, error.error_code, failed=error.backend_failed)
                    if self._resendable(error, exchange) and self._fail_over(exchange, error):
                        continue
                wait = self._wait_after_failure(error, exchange)
                if wait is None or not await self._pause(wait, exchange, error):
                    raise
                continue
            backend.health.note_response()
            if upstream.status not in RETRYABLE_STATUSES:
                if several and (backend.consecutive_failures or backend.ejections_in_row):
                    backend.note_outcome(failed=False, now=0.0, may_eject=False)
                return upstream
            if several:
                self._note_outcome(exchange, str(upstream.status), failed=True)
                if (
                    exchange.idempotent
                    and not isinstance(exchange.body, StreamedBody)
                    and self._fail_over(exchange, None)
                ):
                    upstream.release()
                    continue
            wait = self._wait_after_status(upstream, exchange)
            if (
                wait is None
                or wait >= exchange.deadline - loop.time()
                or not self._claim_retry_budget(exchange)
            ):
                return upstream  # the backend's own 502/503/504 passes through as it is
            upstream.release()
            await asyncio.sleep(wait)

    async def _attempt(
        self, target: str, headers: CIMultiDict[str], exchange: _Exchange
    ) -> Upstream:
        """One try: connect, send, wait for the response headers, all before the deadline."""
        assert exchange.backend is not None
        url = URL(exchange.backend.upstream_base + target, encoded=True)
        body = exchange.body
        streamed = isinstance(body, StreamedBody)
        send = self._sender(exchange, url, headers)
        try:
            if (
                self._try_timeout is None
                or not exchange.idempotent
                or streamed
                or not self._pool.another_could_take(exchange.tried or [], exchange.backend)
            ):
                response = await send()
            else:
                response = await self._request_or_move_on(exchange, send)
        except aiohttp.ConnectionTimeoutError as error:
            self._note_failure(exchange, "connect_error")
            raise ProxyError(
                Failure.TIMEOUT, "ECONNTIMEOUT", str(error), backend_failed=True
            ) from None
        except TimeoutError:
            # The backend stayed silent longer than the idle timeout after the request was sent.
            self._note_failure(exchange, "timeout")
            raise ProxyError(Failure.TIMEOUT, "ETIMEDOUT", backend_failed=True) from None
        except aiohttp.ClientConnectorError as error:
            refused = isinstance(error.os_error, ConnectionRefusedError)
            self._note_failure(exchange, "refused" if refused else "connect_error")
            if refused:
                raise ProxyError(
                    Failure.REFUSED, "ECONNREFUSED", str(error), 1, backend_failed=True
                ) from None
            code = "ENOTFOUND" if isinstance(error, aiohttp.ClientConnectorDNSError) else "ECONNECT"
            raise ProxyError(Failure.BAD_GATEWAY, code, str(error), backend_failed=True) from None
        except (aiohttp.ClientResponseError, InvalidHead) as error:
            # A response aiohttp cannot parse (a header over its size limit, say): the same
            # request would get the same response, so it is not retried, and the backend is
            # answering, so it is not counted as down.
            self._count_attempt(exchange, "invalid_response")
            raise ProxyError(Failure.BAD_GATEWAY, "EINVALIDRESPONSE", error.message) from None
        except (aiohttp.ClientError, OSError) as error:
            if isinstance(body, StreamedBody) and body.too_large:
                raise ProxyError(Failure.TOO_LARGE) from None
            self._note_failure(exchange, "reset")
            code = "ECONNRESET" if _is_reset(error) else "EBADRESPONSE"
            cause = f"{type(error).__name__}: {error}"
            raise ProxyError(Failure.BAD_GATEWAY, code, cause, backend_failed=True) from None
        self._count_attempt(exchange, "response")
        return response

    def _sender(
        self, exchange: _Exchange, url: URL, headers: CIMultiDict[str]
    ) -> Callable[[], Awaitable[Upstream]]:
        """How this attempt is sent: an event stream on the proxy's own protocol (plain HTTP
        backends), anything else through aiohttp's client."""
        if exchange.event_stream and url.scheme == "http":
            timeouts = self.config.timeouts
            return partial(
                open_event_stream,
                self.loop,
                url,
                headers,
                connect_timeout=timeouts.connect,
                idle_timeout=timeouts.idle,
            )
        assert self._session is not None
        body = exchange.body
        return partial(
            self._session.request,
            exchange.method,
            url,
            headers=headers,
            data=body.chunks() if isinstance(body, StreamedBody) else body,
            allow_redirects=False,
        )

    async def _request_or_move_on(
        self, exchange: _Exchange, send: Callable[[], Awaitable[Upstream]]
    ) -> Upstream:
        """The request, given up (TimeoutError) after the try timeout or as soon as its backend
        is ejected, so that it can go to another backend. A `Deadline` rather than
        `asyncio.timeout()`: a third of the cost, on every GET when there are several backends."""
        backend = exchange.backend
        assert backend is not None
        assert self._try_timeout is not None
        cutoff = Deadline(self.loop, self.loop.time() + self._try_timeout)
        backend.waiting.add(cutoff)
        try:
            return await send()
        except asyncio.CancelledError:
            if not cutoff.expired:
                raise
            cutoff.absorb()
            task = asyncio.current_task(self.loop)
            if task is not None and task.cancelling():
                raise  # the request's own deadline (or the client leaving) came at once too
            raise TimeoutError from None
        finally:
            cutoff.disarm()
            backend.waiting.discard(cutoff)

    def _count_attempt(self, exchange: _Exchange, outcome: str) -> None:
        self.metrics.count_attempt(outcome)
        exchange.backend.attempts[outcome] += 1  # type: ignore[union-attr]

    def _note_failure(self, exchange: _Exchange, outcome: str) -> None:
        """An attempt could not reach the backend: counted, and the health monitor checks now.
        The breaker hears of it once the whole request is settled."""
        self._count_attempt(exchange, outcome)
        health = exchange.backend.health  # type: ignore[union-attr]
        if outcome == "refused":
            health.note_refused()
        else:
            health.note_failure()

    # -- several backends ------------------------------------------------------------------

    def _note_outcome(self, exchange: _Exchange, outcome: str, *, failed: bool) -> None:
        """With several backends: what this attempt met, for the error's `details.backends`
        and for outlier detection."""
        backend = exchange.backend
        assert backend is not None
        assert exchange.tried is not None
        exchange.tried.append((backend, outcome))
        backend.note_outcome(failed=failed, now=self.loop.time(), may_eject=self._pool.may_eject())

    @staticmethod
    def _resendable(error: ProxyError, exchange: _Exchange) -> bool:
        """Whether a failed attempt may go again, elsewhere: the backend failed, and either it
        received nothing or the request is idempotent (and its body can be sent again)."""
        if not error.backend_failed or exchange.body_started:
            return False
        return exchange.idempotent or error.error_code in _NOTHING_SENT

    def _fail_over(self, exchange: _Exchange, error: ProxyError | None) -> bool:
        """Move the request to a backend it has not tried yet, at once (no backoff, no retry
        budget: it adds no load to a struggling backend); False when there is none. The one it
        leaves is settled now: its breaker hears of `error`, or that it answered (None)."""
        assert exchange.tried is not None
        tried = {backend for backend, _ in exchange.tried}
        chosen = self._pool.pick(exclude=tried, passed_over=[], now=self.loop.time())
        if chosen is None:
            return False
        self._settle(exchange, backend_failed=error.backend_failed if error else False)
        exchange.backend.outstanding -= 1  # type: ignore[union-attr]
        self._use(exchange, chosen)
        self.metrics.failovers += 1
        return True

    def _wait_after_failure(self, error: ProxyError, exchange: _Exchange) -> float | None:
        """Seconds to wait before retrying after a transport failure, or None: do not retry."""
        if not error.backend_failed:
            return None  # nothing a retry would change
        nothing_sent = error.error_code in _NOTHING_SENT
        if exchange.body_started or not (nothing_sent or exchange.idempotent):
            return None
        if error.failure is Failure.TIMEOUT and not nothing_sent:
            return None  # the deadline is spent
        if nothing_sent and (
            self._restart_window() > 0
            or (exchange.idempotent and self._backend_may_be_starting(exchange))
        ):
            return _UNTIL_UP  # nothing was sent, so any method may wait and go again
        if exchange.attempts >= self.config.retries.max_attempts or not self._claim_retry_budget(
            exchange
        ):
            return None
        return backoff_delay(exchange.attempts, self.config.retries.delay)

    def _wait_after_status(self, upstream: Upstream, exchange: _Exchange) -> float | None:
        """Seconds to wait before retrying after a 502/503/504, or None: pass it through."""
        if not exchange.idempotent or isinstance(exchange.body, StreamedBody):
            return None
        if exchange.attempts >= self.config.retries.max_attempts:
            return None
        delay = backoff_delay(exchange.attempts, self.config.retries.delay)
        retry_after = parse_retry_after(upstream.headers.get("Retry-After"))
        return delay if retry_after is None else max(delay, retry_after)

    def _restart_window(self) -> float:
        """Seconds the backend is still expected to be restarting on purpose (0: it is not),
        as the application's `restart_signal` says. Asked only on failure paths."""
        signal = self.config.restart_signal
        return signal() if signal is not None else 0.0

    def _backend_may_be_starting(self, exchange: _Exchange) -> bool:
        """Never seen up, and the proxy itself only just started (as under `sora2 dev`)."""
        if exchange.backend.health.ever_up:  # type: ignore[union-attr]
            return False
        return self.loop.time() < self._startup_ends

    def _claim_retry_budget(self, exchange: _Exchange) -> bool:
        """One budget slot per retrying request, held until it finishes."""
        if exchange.holds_retry_budget:
            return True
        if self.budget.try_acquire():
            exchange.holds_retry_budget = True
            return True
        self.metrics.budget_refusals += 1
        return False

    async def _pause(self, wait: float, exchange: _Exchange, error: ProxyError) -> bool:
        """Wait before the next attempt; False when the deadline would pass first."""
        loop = self.loop
        remaining = exchange.deadline - loop.time()
        if wait == _UNTIL_UP:
            exchange.waiting_for_start = error
            expected = max(self._startup_ends - loop.time(), self._restart_window())
            health = exchange.backend.health  # type: ignore[union-attr]
            up = await health.wait_until_up(min(remaining, expected))
            exchange.waiting_for_start = None
            return up
        if wait >= remaining:
            return False
        await asyncio.sleep(wait)
        return True

    # -- the answer ------------------------------------------------------------------------

    async def _respond(
        self, request: web.Request, upstream: Upstream, exchange: _Exchange
    ) -> web.StreamResponse:
        headers, raw_bytes = downstream_response_headers(
            upstream.headers,
            request_id=exchange.request_id,
            via=self.config.via,
            api_url=exchange.backend.url,  # type: ignore[union-attr]
            upstream_prefix=self.config.upstream_prefix,
            public_prefix=self.public_prefix,
        )
        exchange.cors.apply(headers)
        status = upstream.status
        reason = upstream.reason
        if has_no_body(exchange.method, status):
            response = RelayedStream(
                status=status, reason=reason, headers=headers, raw_bytes=raw_bytes
            )
            await response.prepare(request)
            return response
        length = upstream.content_length
        # One write when the whole body is in hand already; a body still arriving is streamed
        # as it comes, however small (a slow answer must not be held back until complete).
        if length is not None and length <= BUFFERED_RESPONSE_BYTES and _body_in_hand(upstream):
            try:
                data = await read_small_body(upstream)
            except StreamBroken as broken:
                raise ProxyError(Failure.BAD_GATEWAY, "ETRUNCATED", str(broken)) from None
            headers.popall("Content-Length", None)  # aiohttp sets it from the body
            self.metrics.bytes_out += len(data)
            return RelayedBody(
                status=status, reason=reason, headers=headers, body=data, raw_bytes=raw_bytes
            )
        response = RelayedStream(status=status, reason=reason, headers=headers, raw_bytes=raw_bytes)
        await response.prepare(request)
        exchange.answered_at = time.perf_counter()
        assert self._idle_streams is not None
        try:
            if isinstance(upstream, EventStream):
                await upstream.relay(
                    response,
                    count_bytes=self.metrics.add_bytes_out,
                    send_timeout=self.config.timeouts.idle,
                    idle=self._idle_streams,
                )
            else:
                await stream_body(
                    response,
                    upstream,
                    self.metrics.add_bytes_out,
                    self.config.timeouts.idle,
                    self._idle_streams,
                )
        except StreamBroken as broken:
            # The headers are gone already: the only honest signal left is a broken connection.
            logger.warning("backend broke off the response body: %s", broken)
            self.metrics.truncated_responses += 1
            exchange.truncated = True
            request.protocol.force_close()
            return response
        try:
            # The end of the body waits only if the client stopped reading just then.
            async with asyncio.timeout(self.config.timeouts.idle):
                await response.write_eof()
        except (ConnectionError, TimeoutError):
            raise ClientGone from None
        return response


def _body_in_hand(upstream: Upstream) -> bool:
    if isinstance(upstream, EventStream):
        return upstream.complete
    return upstream.content.is_eof()


def _origin_form(target: str) -> str:
    """`/path?query` of an absolute-form request target (`GET http://host/path`), which HTTP/1.1
    servers must accept (RFC 9112 §3.2.2); anything else is not a path the proxy forwards."""
    url = URL(target, encoded=True)
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ProxyError(Failure.BAD_PATH, detail="a request target that is not a path")
    return url.raw_path_qs


def _refuse_unknown_transfer_coding(request: web.Request) -> None:
    """Only `chunked` is understood; a body in any other transfer-coding cannot be forwarded
    faithfully, and RFC 9112 §6.1 asks for 501."""
    codings = [
        token.strip().lower()
        for value in request.headers.getall("Transfer-Encoding")
        for token in value.split(",")
        if token.strip()
    ]
    if codings != ["chunked"]:
        raise ProxyError(Failure.UNSUPPORTED_CODING, detail=", ".join(codings) or "(empty)")


async def _continue_if_expected(request: web.Request) -> None:
    if request.headers["Expect"].lower() == "100-continue" and request.body_exists:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _is_reset(error: BaseException) -> bool:
    return isinstance(error, aiohttp.ServerDisconnectedError | ConnectionResetError) or (
        isinstance(error, aiohttp.ClientOSError) and error.errno in (104, 32)
    )
