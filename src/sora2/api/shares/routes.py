"""Share links: the owner's `/api/videos/{id}/share`, and `/api/shared/{token}` for anyone.

The public routes answer 404 alike for a revoked, unknown or malformed token, and are limited
per client address (`SHARE_LIMIT_PER_IP`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from sora2.api.context import ApiContext
from sora2.api.deps import ClientIp, Context, CurrentUser, ReadConnection, SessionDep
from sora2.api.errors import ERROR_RESPONSES
from sora2.api.shares import service
from sora2.api.shares.schemas import ShareCreated, SharedVideo, ShareState
from sora2.api.videos.routes import FILE_RESPONSES, THUMBNAIL_RESPONSES, completed_file_response
from sora2.api.videos.service import get_own

owner_router = APIRouter(prefix="/api/videos", tags=["sharing"], responses=ERROR_RESPONSES)
public_router = APIRouter(prefix="/api/shared", tags=["sharing"], responses=ERROR_RESPONSES)

CONFLICT: dict[int | str, dict[str, Any]] = {
    409: ERROR_RESPONSES[400] | {"description": "The video is not completed"}
}
# Revoking must take effect at once: shared answers are revalidated on every use.
SHARED_CACHE = {"Cache-Control": "private, no-cache"}


@owner_router.post(
    "/{video_id}/share", response_model=ShareCreated, status_code=201, responses=CONFLICT
)
async def share_video(
    video_id: str, user: CurrentUser, context: Context, session: SessionDep
) -> ShareCreated:
    """A link anyone can open to watch this completed video; a previous link stops working.
    The link is shown this once (only a hash of its token is kept)."""
    video = await get_own(session, user_id=user.id, video_id=video_id)
    token, share = await service.create(session, video=video)
    return ShareCreated(
        url=f"{context.settings.frontend_url}/s/{token}",
        token=token,
        video_id=video.id,
        created_at=share.created_at,
    )


@owner_router.get("/{video_id}/share", response_model=ShareState)
async def share_state(video_id: str, user: CurrentUser, session: SessionDep) -> ShareState:
    """Whether the video has a live link (the link itself cannot be shown again)."""
    await get_own(session, user_id=user.id, video_id=video_id)
    since = await service.live_since(session, video_id=video_id)
    return ShareState(shared=since is not None, created_at=since)


@owner_router.delete("/{video_id}/share", status_code=204, response_class=Response)
async def revoke_share(video_id: str, user: CurrentUser, session: SessionDep) -> Response:
    """The link stops working at once (204 also when there was none)."""
    await get_own(session, user_id=user.id, video_id=video_id)
    await service.revoke(session, video_id=video_id)
    return Response(status_code=204)


async def _limit(context: ApiContext, ip: str) -> None:
    await context.limiter.check_and_record(
        f"shared:ip:{ip}", context.settings.share_limit_per_ip, "requests for shared videos"
    )


@public_router.get("/{token}", response_model=SharedVideo)
async def shared_video(
    token: str, context: Context, connection: ReadConnection, ip: ClientIp, response: Response
) -> SharedVideo:
    """A shared video's details: prompt, model, length, size, when — nothing of its owner."""
    await _limit(context, ip)
    video = await service.resolve(connection, token)
    response.headers.update(SHARED_CACHE)
    return SharedVideo(
        prompt=video["prompt"],
        model=video["model"],
        seconds=video["seconds"],
        size=video["size"],
        created_at=video["created_at"],
        content_url=f"/api/shared/{token}/content",
        thumbnail_url=f"/api/shared/{token}/thumbnail",
    )


@public_router.get("/{token}/content", response_class=StreamingResponse, responses=FILE_RESPONSES)
async def shared_content(
    request: Request, token: str, context: Context, connection: ReadConnection, ip: ClientIp
) -> Response:
    """The MP4, with `Range` (206; 416 outside the file)."""
    await _limit(context, ip)
    video = await service.resolve(connection, token)
    return await completed_file_response(
        request, context.storage, video, "video", cache_control=SHARED_CACHE["Cache-Control"]
    )


@public_router.get(
    "/{token}/thumbnail", response_class=StreamingResponse, responses=THUMBNAIL_RESPONSES
)
async def shared_thumbnail(
    request: Request, token: str, context: Context, connection: ReadConnection, ip: ClientIp
) -> Response:
    await _limit(context, ip)
    video = await service.resolve(connection, token)
    return await completed_file_response(
        request, context.storage, video, "thumbnail", cache_control=SHARED_CACHE["Cache-Control"]
    )
