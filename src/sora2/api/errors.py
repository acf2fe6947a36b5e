"""Every error the api makes, in DESIGN's JSON shape, decided in one place.

Domain code raises `ApiError` (or a subclass naming the category); FastAPI's own errors are
translated here too. Validation errors answer 422 (the body was well-formed but a field was wrong)
or 400 (the body was not JSON at all), each with a message naming the field and what to send.
Unexpected exceptions become a 500 whose message never shows internals outside development.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from sora2.logs import request_id_var

logger = logging.getLogger("sora2.api.errors")


class ErrorBody(BaseModel):
    error: str = Field(description="Short title of the problem")
    message: str = Field(description="What happened and what to do about it")
    details: dict[str, Any] = Field(default_factory=dict)
    requestId: str = Field(description="The X-Request-ID of this exchange, for support")


class ApiError(Exception):
    # True for a refusal whose writes must stand: the transaction's owner commits, then answers.
    keep_transaction = False

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    return ApiError(404, "Not Found", f"{what} does not exist or is not yours.")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "Unauthorized", message)


def error_response(
    status: int,
    error: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=error, message=message, details=details or {}, requestId=request_id_var.get()
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# Responses every route may give, for the OpenAPI document (replaces FastAPI's default 422 body).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Malformed request"),
        (401, "Not signed in"),
        (403, "Not allowed"),
        (404, "Not found"),
        (422, "A field is invalid"),
        (429, "Too many requests"),
    )
}

_HTTP_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
}


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _describe_validation(error: RequestValidationError) -> tuple[int, str, list[dict[str, str]]]:
    problems: list[dict[str, str]] = []
    for item in error.errors():
        location = tuple(item.get("loc", ()))
        kind = str(item.get("type", ""))
        if kind == "json_invalid":
            return 400, "The request body is not valid JSON: send a JSON object.", []
        field = _field_name(location)
        message = str(item.get("msg", "is invalid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "is not a known field; remove it"
        elif kind == "missing":
            message = "is required"
        problems.append({"field": field, "message": message})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
    return 422, f"Invalid request: {summary}.", problems


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, problems = _describe_validation(exc)
        title = "Validation Error" if status == 422 else "Bad Request"
        return error_response(status, title, message, {"fields": problems} if problems else {})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        message = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404:
            message = "No such route: check the path against /api-docs."
        return error_response(exc.status_code, title, message, headers=dict(exc.headers or {}))


DATABASE_RETRY_AFTER_SECONDS = 5


# What asyncpg raises itself (the hot routes use it without SQLAlchemy) when a connection is
# refused by the server or lost mid-statement.
_DRIVER_OUTAGES = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def is_database_outage(error: Exception) -> bool:
    """The database refused, dropped or timed out a connection (or its pool is exhausted): a
    passing condition, not a bug. A request's only network peer is the database, so a connection
    error escaping a route is the database's."""
    if isinstance(error, (ConnectionError, TimeoutError, PoolTimeout, *_DRIVER_OUTAGES)):
        return True
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or isinstance(error.orig, ConnectionError | TimeoutError)
    )


def is_database_busy(error: Exception) -> bool:
    """SQLite's write lock stayed taken for the whole busy timeout: another process (a worker,
    a `sqlite3` shell left in a transaction) holds it. It passes when that process lets go."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    return isinstance(cause, sqlite3.OperationalError) and str(cause).startswith(
        "database is locked"
    )


def unexpected_error_response(error: Exception, *, show_internals: bool) -> JSONResponse:
    """What an exception no route handled becomes: 503 when the database is out of reach or
    busy (the client should retry), else a 500 for a bug, logged with its traceback and never
    shown outside development."""
    if is_database_busy(error):
        logger.warning("database busy: its write lock is held elsewhere")
        return error_response(
            503,
            "Service Unavailable",
            "The database is busy: another process has held its write lock for too long, so "
            f"this request could not be completed; try again in {DATABASE_RETRY_AFTER_SECONDS} s.",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if is_database_outage(error):
        logger.warning("database unreachable: %s", type(error).__name__)
        return error_response(
            503,
            "Service Unavailable",
            "The database is unreachable right now, so this request could not be completed; "
            f"try again in {DATABASE_RETRY_AFTER_SECONDS} s. `/api/health` shows when it is back.",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    logger.error("unhandled error", exc_info=error)
    message = (
        f"{type(error).__name__}: {error}"
        if show_internals
        else "Something went wrong on our side. Try again; if it persists, quote the requestId."
    )
    return error_response(500, "Internal Server Error", message)
