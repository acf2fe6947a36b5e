"""Every failure the proxy answers itself: a category, turned into seed-shaped JSON here."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web


class Failure(enum.Enum):
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    BAD_GATEWAY = "bad_gateway"
    TOO_LARGE = "too_large"
    BODY_TIMEOUT = "body_timeout"
    SATURATED = "saturated"
    UNSUPPORTED_CODING = "unsupported_coding"
    BAD_PATH = "bad_path"
    FORBIDDEN_ORIGIN = "forbidden_origin"


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


_STATUS = {
    Failure.REFUSED: 503,
    Failure.UNAVAILABLE: 503,
    Failure.TIMEOUT: 504,
    Failure.BAD_GATEWAY: 502,
    Failure.TOO_LARGE: 413,
    Failure.BODY_TIMEOUT: 408,
    Failure.SATURATED: 503,
    Failure.UNSUPPORTED_CODING: 501,
    Failure.BAD_PATH: 400,
    Failure.FORBIDDEN_ORIGIN: 403,
}

_TITLE = {
    Failure.REFUSED: "Backend API Connection Refused",
    Failure.UNAVAILABLE: "Backend API Unavailable",
    Failure.TIMEOUT: "Request Timeout",
    Failure.BAD_GATEWAY: "Bad Gateway",
    Failure.TOO_LARGE: "Payload Too Large",
    Failure.BODY_TIMEOUT: "Request Body Timeout",
    Failure.SATURATED: "Proxy At Capacity",
    Failure.UNSUPPORTED_CODING: "Not Implemented",
    Failure.BAD_PATH: "Bad Request",
    Failure.FORBIDDEN_ORIGIN: "Forbidden Origin",
}

_START_BACKEND = "Start the backend: sora2 dev api (or make dev for everything)"


def _localhost_hint(api_url: str) -> str:
    host = urlsplit(api_url).hostname or ""
    if host == "localhost":
        return (
            " API_URL uses 'localhost', which may resolve to ::1 while the api listens on"
            " 127.0.0.1: set API_URL=http://127.0.0.1:3101."
        )
    return ""


def _message_and_suggestion(
    error: ProxyError, *, api_url: str, timeout_ms: int, max_body: int
) -> tuple[str, str]:
    match error.failure:
        case Failure.REFUSED:
            return (
                f"Failed to connect to backend API at {api_url}. The API server is not running.",
                _START_BACKEND + "." + _localhost_hint(api_url),
            )
        case Failure.UNAVAILABLE:
            return (
                f"The backend API at {api_url} is failing, so requests are refused at once "
                "until it recovers.",
                "Check logs/api.log or run sora2 doctor. If the api is stopped, start it: "
                "sora2 dev api. Traffic resumes within a second of the backend answering again.",
            )
        case Failure.TIMEOUT:
            return (
                f"Request to backend API timed out after {timeout_ms}ms.",
                "The api is overloaded or stuck: check logs/api.log. If this endpoint is slow by "
                "nature, raise PROXY_REQUEST_TIMEOUT_MS.",
            )
        case Failure.BAD_GATEWAY:
            return (
                f"The backend API at {api_url} broke the connection or sent an invalid response.",
                "The api may have crashed or restarted mid-request: check logs/api.log. "
                "Retry the request; it was not repeated automatically because that was not safe.",
            )
        case Failure.TOO_LARGE:
            return (
                f"The request body is larger than the proxy's limit of {max_body} bytes.",
                "Send a smaller body, or raise PROXY_MAX_BODY_BYTES.",
            )
        case Failure.BODY_TIMEOUT:
            return (
                "The request body stopped arriving before it was complete, so it was not "
                "forwarded.",
                "Send the whole body without pauses longer than PROXY_IDLE_TIMEOUT_MS "
                f"({error.extra.get('idleTimeout', '?')} ms).",
            )
        case Failure.SATURATED:
            return (
                "The proxy already holds as many backend connections as it may "
                f"({error.extra.get('poolSize', '?')}); this request waited for one until its "
                "deadline. The backend itself was not at fault.",
                "Retry shortly. If this lasts, raise PROXY_POOL_SIZE (and the open-file limit: "
                "sora2 doctor shows it).",
            )
        case Failure.UNSUPPORTED_CODING:
            return (
                f"The request body's Transfer-Encoding ({error.detail}) is not supported.",
                "Send the body with a Content-Length or as plain chunked; compress it with "
                "Content-Encoding instead.",
            )
        case Failure.BAD_PATH:
            return (
                f"The request path contains {error.detail or 'something not allowed'}, "
                "so it was not forwarded.",
                "Use a plain path under /api/proxy/ without '..', '//', backslashes, URL schemes "
                "or control characters.",
            )
        case Failure.FORBIDDEN_ORIGIN:
            return (
                "Cross-origin requests that change data are only accepted from the app's own "
                "origin.",
                "Call the API from the Sora2 web app, or add your origin to FRONTEND_URL.",
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
    development: bool,
) -> web.Response:
    message, suggestion = _message_and_suggestion(
        error, api_url=api_url, timeout_ms=timeout_ms, max_body=max_body
    )
    details: dict[str, Any] = {"apiUrl": api_url, "suggestion": suggestion}
    if error.error_code:
        details["errorCode"] = error.error_code
    if error.failure is Failure.UNAVAILABLE:
        details["healthCheckFailed"] = True
    if error.failure is Failure.TIMEOUT:
        details["timeout"] = timeout_ms
    details["attempts"] = attempts
    details["duration"] = f"{round(duration * 1000)}ms"
    details.update(error.extra)
    if development and error.detail and error.failure is not Failure.BAD_PATH:
        details["cause"] = error.detail
    body = {
        "error": _TITLE[error.failure],
        "message": message,
        "details": details,
        "requestId": request_id,
    }
    headers = {"X-Request-ID": request_id, "Cache-Control": "no-store", "Server": "sora2"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(
        status=_STATUS[error.failure],
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
