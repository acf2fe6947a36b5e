"""Per-request context as plain ASGI middleware: request id, access log line, metrics, headers.

The request id is the proxy's `X-Request-ID` when it is sane (else a new one); it is put in the
logging context so every log line of the exchange carries it, and echoed on the response.
Only the method, route template, status and time are logged: never bodies, cookies or queries.

It is the outermost of our middleware, so it also answers what nothing inside may see: a URL
with a NUL in it (no id or filter contains one, and PostgreSQL would fail on it), and the 500 for
an unhandled error, which Starlette would otherwise render after the request id is gone.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sora2.api.errors import error_response, unexpected_error_response
from sora2.api.metrics import ApiMetrics
from sora2.logs import request_id_var

logger = logging.getLogger("sora2.api.access")

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: object = getattr(route, "path", None)
    return f"{path}" if path else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics, show_internals: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.show_internals = show_internals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers
                self.metrics.request_seconds.labels(scope["method"]).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            if _has_nul(scope):
                refused = error_response(
                    400,
                    "Bad Request",
                    "The URL contains a NUL character (%00): no path or filter has one; remove it.",
                )
                await refused(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception as error:
            if response_started:
                raise  # the status is out; the server can only cut the connection
            crashed = unexpected_error_response(error, show_internals=self.show_internals)
            await crashed(scope, receive, send_with_headers)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            logger.log(
                # Health probes (the web's proxy checks every few seconds) would drown the log.
                logging.DEBUG if route.startswith("/api/health") and status < 500 else logging.INFO,
                "%s %s %d %.1fms",
                scope["method"],
                route,
                status,
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)
