"""The caller's videos read with the driver (`sora2.api.db.rows`), for the hot routes.

The statements return the columns of `VIDEO_COLUMNS` in that order; `video_json` turns such a
row into what `VideoOut` would answer (a test holds the two to the same bytes).
"""

from __future__ import annotations

from typing import Any

from sora2.api.auth.reads import SIGNED_IN, SIGNED_IN_FROM
from sora2.api.db.rows import Row, Statement, utc

VIDEO_COLUMNS = (
    "id",
    "prompt",
    "model",
    "seconds",
    "size",
    "status",
    "progress",
    "cost",
    "error_code",
    "error_message",
    "video_bytes",
    "remix_of",
    "input_reference_key",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "video_key",
    "thumbnail_key",
)
VIDEO_STATUSES = frozenset({"queued", "in_progress", "completed", "failed", "cancelled"})
_SELECTED = ", ".join(f"v.{column}" for column in VIDEO_COLUMNS)

# The caller's one video, if their session is live: no row means "let the full route answer".
OWN_VIDEO = Statement(
    f"SELECT {_SELECTED} FROM {SIGNED_IN_FROM} JOIN videos v ON v.user_id = u.id "
    f"WHERE {SIGNED_IN} AND v.id = :video_id"
)


# For a create with an `Idempotency-Key`: whether the key is free (NULL), with the session check.
KEY_HOLDER = Statement(
    "SELECT (SELECT 1 FROM idempotency_keys k WHERE k.user_id = :user_id AND k.key = :key) "
    f"FROM {SIGNED_IN_FROM} WHERE {SIGNED_IN}"
)


def _listing(where: str) -> tuple[Statement, Statement]:
    """How many of the caller's videos match (no row: the session is not live), and one page."""
    count = Statement(
        f"SELECT (SELECT count(*) FROM videos v WHERE v.user_id = :user_id {where}) "
        f"FROM {SIGNED_IN_FROM} WHERE {SIGNED_IN}"
    )
    page = Statement(
        f"SELECT {_SELECTED} FROM videos v WHERE v.user_id = :user_id {where} "
        "ORDER BY v.created_at DESC, v.id DESC LIMIT :limit OFFSET :offset"
    )
    return count, page


LISTING_ALL = _listing("")
LISTING_BY_STATUS = _listing("AND v.status = :status")


_TIMESTAMPS = frozenset({"created_at", "updated_at", "started_at", "finished_at"})


def video_columns(row: Row, *, user_id: str) -> dict[str, Any]:
    """A row of `VIDEO_COLUMNS` as the routes' Core reads give it: a dict, aware timestamps."""
    video = {
        column: utc(value) if column in _TIMESTAMPS else value
        for column, value in zip(VIDEO_COLUMNS, row, strict=True)
    }
    video["user_id"] = user_id
    return video


def video_json(row: Row) -> dict[str, Any]:
    """A row of `VIDEO_COLUMNS` as `VideoOut` serialises it (camelCase, computed URLs)."""
    (
        video_id,
        prompt,
        model,
        seconds,
        size,
        status,
        progress,
        cost,
        error_code,
        error_message,
        video_bytes,
        remix_of,
        input_reference_key,
        created_at,
        updated_at,
        started_at,
        finished_at,
        _video_key,
        _thumbnail_key,
    ) = row
    completed = status == "completed"
    return {
        "id": video_id,
        "prompt": prompt,
        "model": model,
        "seconds": seconds,
        "size": size,
        "status": status,
        "progress": progress,
        "cost": cost,
        "errorCode": error_code,
        "errorMessage": error_message,
        "videoBytes": video_bytes,
        "remixOf": remix_of,
        "createdAt": utc(created_at),
        "updatedAt": utc(updated_at),
        "startedAt": utc(started_at),
        "finishedAt": utc(finished_at),
        "contentUrl": f"/api/videos/{video_id}/content" if completed else None,
        "inputReferenceUrl": (
            f"/api/videos/{video_id}/input_reference" if input_reference_key is not None else None
        ),
        "thumbnailUrl": f"/api/videos/{video_id}/thumbnail" if completed else None,
    }
