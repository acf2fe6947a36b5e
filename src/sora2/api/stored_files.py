"""Serving a stored object over HTTP: `Range` (206/416), `If-Range`, validators, streaming."""

from __future__ import annotations

import logging
from email.utils import format_datetime

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from sora2.api.byte_ranges import ByteRange, MalformedRange, UnsatisfiableRange, parse_range
from sora2.api.errors import ApiError
from sora2.api.storage import Storage, StorageUnavailable, StoredObject

logger = logging.getLogger("sora2.storage")

STORAGE_RETRY_AFTER_SECONDS = 5


def _etag(stored: StoredObject) -> str | None:
    if not stored.etag:
        return None
    return stored.etag if stored.etag.startswith('"') else f'"{stored.etag}"'


def _range_applies(request: Request, etag: str | None, last_modified: str) -> bool:
    """RFC 9110 §13.1.5: with `If-Range`, the range holds only for the same version."""
    condition = request.headers.get("if-range")
    if condition is None:
        return True
    return condition.strip() in {etag, last_modified}


def _requested_range(request: Request, size: int, applies: bool) -> ByteRange | None:
    header = request.headers.get("range")
    if header is None or not applies:
        return None
    try:
        return parse_range(header, size)
    except MalformedRange:
        raise ApiError(
            400, "Bad Request", "The Range header is malformed: send e.g. 'bytes=0-1023'."
        ) from None
    except UnsatisfiableRange:
        raise ApiError(
            416,
            "Range Not Satisfiable",
            f"The requested range is outside the file ({size} bytes).",
            details={"size": size},
            headers={"Content-Range": f"bytes */{size}"},
        ) from None


def storage_unavailable(error: StorageUnavailable) -> ApiError:
    logger.warning("%s", error)
    return ApiError(
        503,
        "Storage Unavailable",
        "The file store cannot be reached right now; try again in a few seconds.",
        details={"retryAfterSeconds": STORAGE_RETRY_AFTER_SECONDS},
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
    )


async def stored_file_response(
    request: Request,
    storage: Storage,
    key: str,
    *,
    what: str,
    media_type: str,
    cache_control: str,
    download_name: str | None = None,
) -> Response:
    """The object under `key` (or the range asked for), streamed from the store."""
    try:
        stored = await storage.stat(key)
    except StorageUnavailable as error:
        raise storage_unavailable(error) from None
    if stored is None:
        raise ApiError(404, "Not Found", f"The {what} file of this video is missing from storage.")
    etag = _etag(stored)
    last_modified = format_datetime(stored.last_modified, usegmt=True)
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": cache_control,
        "Last-Modified": last_modified,
    }
    if etag:
        headers["ETag"] = etag
    if download_name:
        headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    byte_range = _requested_range(
        request, stored.size, _range_applies(request, etag, last_modified)
    )
    if byte_range is None:
        byte_range, status = ByteRange(0, stored.size), 200
    else:
        status = 206
        headers["Content-Range"] = byte_range.content_range(stored.size)
    headers["Content-Length"] = str(byte_range.length)
    try:
        whole = storage.read_at_once(key, byte_range.start, byte_range.end)
        if whole is not None:  # in hand: one plain response, no streaming machinery
            return Response(whole, status_code=status, media_type=media_type, headers=headers)
        body = await storage.open_range(key, byte_range.start, byte_range.end)
    except FileNotFoundError:  # deleted between the two requests
        raise ApiError(
            404, "Not Found", f"The {what} file of this video is missing from storage."
        ) from None
    except StorageUnavailable as error:
        raise storage_unavailable(error) from None
    return StreamingResponse(
        body,
        status_code=status,
        media_type=media_type,
        headers=headers,
    )
