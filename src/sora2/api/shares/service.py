"""Share links: make (one live link per video; a new one revokes the old), revoke, resolve.

The token is 256 random bits; only its SHA-256 is stored, so the link cannot be rebuilt from the
database — the owner sees it once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from sora2.api.db.base import utcnow
from sora2.api.errors import ApiError
from sora2.api.shares.models import VideoShare
from sora2.api.videos.models import Video

TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _revoke_live(session: AsyncSession, video_id: str) -> int:
    result = await session.execute(
        update(VideoShare)
        .where(VideoShare.video_id == video_id, VideoShare.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def create(session: AsyncSession, *, video: Video) -> tuple[str, VideoShare]:
    """A new link for a completed video (the previous one stops working); the token and row."""
    if video.status != "completed":
        raise ApiError(
            409,
            "Conflict",
            f"This video is {video.status}: only a completed video can be shared.",
            details={"status": video.status},
        )
    await _revoke_live(session, video.id)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    share = VideoShare(video_id=video.id, token_hash=hash_token(token))
    session.add(share)
    await session.flush()
    return token, share


async def revoke(session: AsyncSession, *, video_id: str) -> bool:
    """Ends the video's live link; False when it had none."""
    return await _revoke_live(session, video_id) > 0


async def live_since(session: AsyncSession, *, video_id: str) -> datetime | None:
    """When the video's live link was made, or None when it is not shared."""
    return (
        await session.execute(
            select(VideoShare.created_at).where(
                VideoShare.video_id == video_id, VideoShare.revoked_at.is_(None)
            )
        )
    ).scalar_one_or_none()


_SHARED_VIDEO = (
    select(*Video.__table__.c)
    .join(VideoShare, VideoShare.video_id == Video.id)
    .where(
        VideoShare.token_hash == bindparam("token_hash"),
        VideoShare.revoked_at.is_(None),
        Video.status == "completed",
    )
)


async def resolve(connection: AsyncConnection, token: str) -> dict[str, Any]:
    """The completed video a live token opens, as a dict of its columns; 404 otherwise (the
    same answer for a revoked, unknown or malformed token)."""
    if not token or len(token) > 128:
        raise not_shared()
    row = (await connection.execute(_SHARED_VIDEO, {"token_hash": hash_token(token)})).first()
    if row is None:
        raise not_shared()
    return row._asdict()


def not_shared() -> ApiError:
    return ApiError(404, "Not Found", "This share link does not exist or was revoked by its owner.")
