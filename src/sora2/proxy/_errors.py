"""Every failure the proxy answers itself: a kind (which carries its status and title), turned
into seed-shaped JSON here.

Messages name the backend's address and the low-level cause only when the configuration says to
expose internals (development); otherwise they say what happened in words an outsider may read.
Suggestions are the application's to give (`ProxyConfig.suggestions`: which command starts the
backend, which log to read); the ones here are neutral defaults.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


class Failure(enum.Enum):
    """What went wrong, with the status and the `error` title the proxy answers it with."""

    REFUSED = ("refused", 503, "Backend API Connection Refused")
    UNAVAILABLE = ("unavailable", 503, "Backend API Unavailable")
    TIMEOUT = ("timeout", 504, "Request Timeout")
    BAD_GATEWAY = ("bad_gateway", 502, "Bad Gateway")
    TOO_LARGE = ("too_large", 413, "Payload Too Large")
    BODY_TIMEOUT = ("body_timeout", 408, "Request Body Timeout")
    SATURATED = ("saturated", 503, "Proxy At Capacity")
    UNSUPPORTED_CODING = ("unsupported_coding", 501, "Not Implemented")
    BAD_PATH = ("bad_path", 400, "Bad Request")
    FORBIDDEN_ORIGIN = ("forbidden_origin", 403, "Forbidden Origin")

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug = slug
        self.status = status
        self.title = title


@dataclass(slots=True)
class ProxyError(Exception):
    """A failure and what is known of it; `error_code` names the low-level cause (ECONNRESET…)."""

    failure: Failure
    error_code: str = ""
    detail: str = ""
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    backend_failed: bool = False
    """The backend could not be reached, reset the connection or stayed silent: what the
    circuit breaker counts, and what a retry may cure."""


DEFAULT_SUGGESTIONS: Mapping[Failure, str] = {
    Failure.REFUSED: "Check that the backend API is running and reachable from the proxy.",
    Failure.UNAVAILABLE: (
        "The backend API is failing its health checks; traffic resumes within a second of it "
        "answering again."
    ),
    Failure.TIMEOUT: (
        "The backend API is overloaded or stuck. If this endpoint is slow by nature, raise the "
        "proxy's request timeout."
    ),
    Failure.BAD_GATEWAY: (
        "The backend API may have restarted mid-request. Retry the request; it was not repeated "
        "automatically because that was not safe."
    ),
    Failure.TOO_LARGE: "Send a smaller body.",
    Failure.BODY_TIMEOUT: "Send the whole body without long pauses.",
    Failure.SATURATED: "Retry shortly; the proxy is holding as many connections as it may.",
    Failure.UNSUPPORTED_CODING: (
        "Send the body with a Content-Length or as plain chunked; compress it with "
        "Content-Encoding instead."
    ),
    Failure.BAD_PATH: (
        "Use a plain path without '..', '//', backslashes, URL schemes or control characters."
    ),
    Failure.FORBIDDEN_ORIGIN: "Call the API from the application's own pages.",
}


def _message(error: ProxyError, *, backend: str, timeout_ms: int, max_body: int) -> str:
    match error.failure:
        case Failure.REFUSED:
            return f"Failed to connect to {backend}. The API server is not running."
        case Failure.UNAVAILABLE:
            return f"The {backend} is failing, so requests are refused at once until it recovers."
        case Failure.TIMEOUT:
            return f"Request to {backend} timed out after {timeout_ms}ms."
        case Failure.BAD_GATEWAY:
            return f"The {backend} broke the connection or sent an invalid response."
        case Failure.TOO_LARGE:
            return f"The request body is larger than the proxy's limit of {max_body} bytes."
        case Failure.BODY_TIMEOUT:
            return (
                "The request body stopped arriving before it was complete, so it was not "
                f"forwarded (nothing came for {error.extra.get('idleTimeout', '?')} ms)."
            )
        case Failure.SATURATED:
            return (
                "The proxy already holds as many backend connections as it may "
                f"({error.extra.get('poolSize', '?')}); this request waited for one until its "
                "deadline. The backend itself was not at fault."
            )
        case Failure.UNSUPPORTED_CODING:
            return f"The request body's Transfer-Encoding ({error.detail}) is not supported."
        case Failure.BAD_PATH:
            return (
                f"The request path contains {error.detail or 'something not allowed'}, "
                "so it was not forwarded."
            )
        case Failure.FORBIDDEN_ORIGIN:
            return (
                "Cross-origin requests that change data are only accepted from the app's own "
                "origin."
            )


def error_response(
    error: ProxyError,
    *,
    request_id: str,
    api_url: str,
    attempts: int,
    duration: float,
    timeout_ms: int,
    max_body: int,
    expose_internals: bool,
    suggestions: Mapping[Failure, str],
) -> web.Response:
    failure = error.failure
    backend = f"backend API at {api_url}" if expose_internals else "backend API"
    message = _message(error, backend=backend, timeout_ms=timeout_ms, max_body=max_body)
    details: dict[str, Any] = {}
    if expose_internals:
        details["apiUrl"] = api_url
    details["suggestion"] = suggestions.get(failure) or DEFAULT_SUGGESTIONS[failure]
    if error.error_code:
        details["errorCode"] = error.error_code
    if failure is Failure.UNAVAILABLE:
        details["healthCheckFailed"] = True
    if failure is Failure.TIMEOUT:
        details["timeout"] = timeout_ms
    details["attempts"] = attempts
    details["duration"] = f"{round(duration * 1000)}ms"
    details.update(error.extra)
    if expose_internals and error.detail and failure is not Failure.BAD_PATH:
        details["cause"] = error.detail
    body = {"error": failure.title, "message": message, "details": details, "requestId": request_id}
    headers = {"X-Request-ID": request_id, "Cache-Control": "no-store", "Server": "sora2"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(
        status=failure.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
