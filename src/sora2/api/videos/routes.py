"""`/api/videos`: create (202, charged), list, get, delete, cancel, regenerate, events, files."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from sora2.api import live
from sora2.api.context import ApiContext
from sora2.api.db import transaction
from sora2.api.deps import (
    CallerDep,
    Context,
    CurrentUser,
    ReadConnection,
    SessionDep,
    SessionId,
)
from sora2.api.errors import ERROR_RESPONSES, ApiError
from sora2.api.idempotency.service import IdempotencyKeyHeader, IdempotentRequest
from sora2.api.schemas import PageNumber, PageSize
from sora2.api.storage import Storage
from sora2.api.stored_files import stored_file_response
from sora2.api.videos import images, service
from sora2.api.videos.models import Video
from sora2.api.videos.schemas import (
    RemixCreate,
    VideoCreate,
    VideoCreated,
    VideoOut,
    VideoPage,
    VideoStatus,
)

router = APIRouter(prefix="/api/videos", tags=["videos"], responses=ERROR_RESPONSES)

CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    402: ERROR_RESPONSES[400] | {"description": "Not enough credits"},
    422: ERROR_RESPONSES[400]
    | {"description": "A field is invalid, or the Idempotency-Key was used for another request"},
    429: ERROR_RESPONSES[400]
    | {"description": "Too many videos started in the window (GENERATE_LIMIT_PER_USER)"},
}
STATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: ERROR_RESPONSES[400] | {"description": "Not possible in this state"}
}


class _MultipartSeen(BaseModel):
    """What makes a multipart create "the same request" for its Idempotency-Key: the fields and
    the image's digest (the image itself is too big to keep)."""

    fields: VideoCreate
    input_reference_sha256: str


async def _create(
    context: ApiContext,
    session: SessionDep,
    user_id: str,
    body: VideoCreate,
    *,
    idempotent: IdempotentRequest | None,
    image: bytes | None = None,
    remix_of: Video | None = None,
) -> VideoCreated | JSONResponse:
    """Charge and queue (202), or replay the answer to an earlier request with the same key.

    A refusal (a choice the model does not offer, a bad image, too few credits) leaves nothing
    behind: no charge, no video, no file, no key."""
    if idempotent is not None and (replay := await idempotent.claim()) is not None:
        return replay
    await context.limiter.check_and_record(
        f"generate:user:{user_id}",
        context.settings.generate_limit_per_user,
        "videos started in a short time",
    )
    choice = service.choose(context.catalog, model=body.model, seconds=body.seconds, size=body.size)
    fitted = None
    if image is not None:
        service.check_image_input(context.catalog, choice.model)
        width, height = (int(side) for side in choice.size.split("x"))
        fitted = await asyncio.to_thread(
            images.fit_reference,
            image,
            width=width,
            height=height,
            max_bytes=context.settings.input_reference_max_bytes,
        )
    video, balance = await service.create(
        session, user_id=user_id, prompt=body.prompt, choice=choice, remix_of=remix_of
    )
    if fitted is not None:
        key = video.input_reference_key = images.reference_key(user_id, video.id)
        # Stored before the commit (a worker may claim the video at once): if the commit does
        # not happen, no row names the file, so it goes too.
        transaction.on_rollback(session, lambda: context.storage.delete(key))
        await images.store_reference(context.storage, key, fitted.data)
    created = VideoCreated.model_validate(
        {
            **VideoOut.model_validate(video).model_dump(),
            "input_reference_key": video.input_reference_key,
            "balance": balance,
        }
    )
    if idempotent is not None:
        idempotent.complete(202, created.model_dump(mode="json", by_alias=True))
    return created  # committed by the request's session (deps.get_session) before it is sent


_FORM_FIELDS_ALLOWANCE = 64 * 1024  # multipart boundaries, headers and the text fields


def _invalid_body(error: ValidationError) -> RequestValidationError:
    """pydantic's complaint about a body we parsed ourselves, answered like FastAPI's own."""
    return RequestValidationError(
        [{**item, "loc": ("body", *item.get("loc", ()))} for item in error.errors()]
    )


async def _create_input(request: Request, max_bytes: int) -> tuple[VideoCreate, bytes | None]:
    """The create's fields, and the image when it came as multipart `input_reference`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _form_input(request, max_bytes)
    if content_type not in ("", "application/json"):
        raise ApiError(
            415,
            "Unsupported Media Type",
            "Send the video's fields as application/json, or as multipart/form-data with an "
            "image in input_reference.",
        )
    raw = await request.body()
    if not raw.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "required"}])
    try:
        # json.loads, as FastAPI reads bodies: text a database cannot store (a lone surrogate)
        # is then the model's 422 naming the field, not a 400 for the whole body.
        document = json.loads(raw)
    except ValueError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON"}]
        ) from None
    try:
        return VideoCreate.model_validate(document), None
    except ValidationError as error:
        raise _invalid_body(error) from None


async def _form_input(request: Request, max_bytes: int) -> tuple[VideoCreate, bytes | None]:
    # Refused before the parser spools the body to disk: the image plus room for the fields.
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + _FORM_FIELDS_ALLOWANCE:
        images.check_size(int(declared) - _FORM_FIELDS_ALLOWANCE, max_bytes)
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except (MultiPartException, HTTPException) as error:
        detail = getattr(error, "message", None) or getattr(error, "detail", "")
        raise ApiError(
            400,
            "Bad Request",
            f"The multipart body could not be read ({detail}): send "
            "prompt, model, seconds and size as fields and the image as one file.",
        ) from None
    fields: dict[str, object] = {}
    upload: UploadFile | None = None
    for name, value in form.multi_items():
        if name == images.FIELD:
            if isinstance(value, str):
                raise ApiError(
                    422,
                    "Validation Error",
                    "input_reference must be a file (an image), not text.",
                    details={"fields": [{"field": images.FIELD, "message": "must be a file"}]},
                )
            upload = value
        elif isinstance(value, str):
            fields[name] = value
        else:
            fields[name] = "<file>"  # a file where text belongs: the model says which field
    try:
        body = VideoCreate.model_validate(fields)
    except ValidationError as error:
        raise _invalid_body(error) from None
    if upload is None:
        return body, None
    data = await upload.read(max_bytes + 1)
    await upload.close()
    images.check_size(len(data), max_bytes)
    return body, data


CREATE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VideoCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        **VideoCreate.model_json_schema()["properties"],
                        images.FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG or WebP; fitted to the size by a centred "
                            "cover-crop (models with image_input only)",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    response_model=VideoCreated,
    status_code=202,
    responses=CREATE_RESPONSES,
    openapi_extra=CREATE_REQUEST_BODY,
)
async def create_video(
    request: Request,
    user: CurrentUser,
    context: Context,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> VideoCreated | JSONResponse:
    """Queue a video: its cost is charged now, refunded on failure.

    JSON, or multipart/form-data with an image in `input_reference` to start from (models with
    `image_input`). Send an `Idempotency-Key` to make retrying safe: the same request with the
    same key answers the first video again (with `Idempotent-Replayed: true`) and is charged
    once."""
    body, image = await _create_input(request, context.settings.input_reference_max_bytes)
    seen: BaseModel = body
    if image is not None:
        seen = _MultipartSeen(fields=body, input_reference_sha256=hashlib.sha256(image).hexdigest())
    idempotent = IdempotentRequest.of(
        session,
        user_id=user.id,
        key=idempotency_key,
        method="POST",
        path="/api/videos",
        body=seen,
    )
    return await _create(context, session, user.id, body, idempotent=idempotent, image=image)


@router.get("", response_model=VideoPage)
async def list_videos(
    caller: CallerDep,
    connection: ReadConnection,
    status: Annotated[VideoStatus | None, Query(description="only videos in this state")] = None,
    page: PageNumber = 1,
    limit: PageSize = 20,
) -> VideoPage:
    """Your videos, newest first."""
    rows, total = await service.list_own(
        connection, user_id=caller.id, status=status, page=page, limit=limit
    )
    return VideoPage(
        items=[VideoOut.model_validate(v) for v in rows], page=page, limit=limit, total=total
    )


@router.get("/{video_id}", response_model=VideoOut)
async def get_video(video_id: str, caller: CallerDep, connection: ReadConnection) -> VideoOut:
    return VideoOut.model_validate(
        await service.read_own(connection, user_id=caller.id, video_id=video_id)
    )


@router.delete("/{video_id}", status_code=204, response_class=Response)
async def delete_video(
    video_id: str, user: CurrentUser, context: Context, session: SessionDep
) -> Response:
    """Delete a video and its files (one still in the works is cancelled and refunded first)."""
    await service.delete(session, storage=context.storage, user_id=user.id, video_id=video_id)
    transaction.after_commit(session, lambda: context.events.notify(video_id))
    return Response(status_code=204)


@router.post("/{video_id}/cancel", response_model=VideoOut, responses=STATE_RESPONSES)
async def cancel_video(
    video_id: str, user: CurrentUser, context: Context, session: SessionDep
) -> VideoOut:
    """Stop a queued or running video and refund its credits (exactly once)."""
    video = await service.cancel(session, user_id=user.id, video_id=video_id)
    transaction.after_commit(session, lambda: context.events.notify(video_id))
    return VideoOut.model_validate(video)


@router.post(
    "/{video_id}/regenerate",
    response_model=VideoCreated,
    status_code=202,
    responses=CREATE_RESPONSES,
)
async def regenerate_video(
    video_id: str,
    user: CurrentUser,
    context: Context,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> VideoCreated | JSONResponse:
    """Make a new video from the same prompt and options; it is charged again (once per
    `Idempotency-Key`, as for create)."""
    idempotent = IdempotentRequest.of(
        session,
        user_id=user.id,
        key=idempotency_key,
        method="POST",
        path=f"/api/videos/{video_id}/regenerate",
    )
    # The replay comes first: it stands even if the source video was deleted since.
    if idempotent is not None and (replay := await idempotent.claim()) is not None:
        return replay
    source = await service.get_own(session, user_id=user.id, video_id=video_id)
    body = VideoCreate.model_validate(
        {
            "prompt": source.prompt,
            "model": source.model,
            "seconds": source.seconds,
            "size": source.size,
        }
    )
    return await _create(context, session, user.id, body, idempotent=idempotent)


@router.post(
    "/{video_id}/remix",
    response_model=VideoCreated,
    status_code=202,
    responses=CREATE_RESPONSES | STATE_RESPONSES,
)
async def remix_video(
    video_id: str,
    body: RemixCreate,
    user: CurrentUser,
    context: Context,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> VideoCreated | JSONResponse:
    """Make a new video from a completed one of yours, with new words: same model, length and
    size, charged like a create of them. Only for models with `remix` (GET /api/models). The new
    video's `remixOf` names its source."""
    idempotent = IdempotentRequest.of(
        session,
        user_id=user.id,
        key=idempotency_key,
        method="POST",
        path=f"/api/videos/{video_id}/remix",
        body=body,
    )
    if idempotent is not None and (replay := await idempotent.claim()) is not None:
        return replay
    source = await service.get_own(session, user_id=user.id, video_id=video_id)
    service.check_remix(context.catalog, source)
    fields = VideoCreate.model_validate(
        {
            "prompt": body.prompt,
            "model": source.model,
            "seconds": source.seconds,
            "size": source.size,
        }
    )
    return await _create(context, session, user.id, fields, idempotent=idempotent, remix_of=source)


async def _read_started() -> float:
    # Listed before the caller's dependencies: on SQLite the read connection's snapshot dates
    # from its first query, the caller check, and the poller must know how old this read is.
    return live.clock()


@router.get(
    "/{video_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
        204: {"description": "`Last-Event-ID` names the `done` event: nothing more will come"},
    },
)
async def video_events(
    video_id: str,
    read_at: Annotated[float, Depends(_read_started)],
    caller: CallerDep,
    session_id: SessionId,
    context: Context,
    connection: ReadConnection,
    last_event_id: Annotated[
        str | None, Header(description="the `id` of the last event received, to resume")
    ] = None,
) -> Response:
    """Server-sent events: `progress` at every status or progress change, `done` at the end
    (`deleted` if the video goes). Each event's `id` names the state; reconnecting with
    `Last-Event-ID` sends the current state only if it differs. An idle stream sends a comment
    every `SSE_HEARTBEAT_SECONDS`."""
    video = await service.read_own(connection, user_id=caller.id, video_id=video_id)
    await connection.close()  # the stream opens short sessions of its own; hold no connection
    return video_events_response(
        context,
        video,
        read_at=read_at,
        user_id=caller.id,
        session_id=session_id,
        last_event_id=last_event_id,
    )


def video_events_response(
    context: ApiContext,
    video: dict[str, Any],
    *,
    read_at: float,
    user_id: str,
    session_id: str,
    last_event_id: str | None,
) -> Response:
    """The event stream from `video` (read at `read_at`) on; 204 if the client has it all."""
    if live.already_delivered(video, last_event_id):
        return Response(status_code=204)
    finished = live.finished_events(video, last_event_id)
    if finished is not None:
        return Response(finished, media_type="text/event-stream", headers=_EVENT_HEADERS)
    return StreamingResponse(
        context.live.stream(
            video,
            read_at=read_at,
            user_id=user_id,
            session_id=session_id,
            last_event_id=last_event_id,
        ),
        media_type="text/event-stream",
        headers=_EVENT_HEADERS,
    )


_EVENT_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# The owner's files may be kept by their browser, never by a shared cache.
PRIVATE_FILE_CACHE = "private, max-age=3600"

# A finished video's two files: the row's column naming each, and what it is served as.
_COMPLETED_FILES: dict[str, tuple[str, str]] = {
    "video": ("video_key", "video/mp4"),
    "thumbnail": ("thumbnail_key", "image/jpeg"),
}


async def completed_file_response(
    request: Request,
    storage: Storage,
    video: dict[str, Any],
    what: str,
    *,
    cache_control: str,
    download_name: str | None = None,
) -> Response:
    """A completed video's MP4 or thumbnail from the store (ranges included); 409 before then.
    The owner's routes and the share links both serve files this way."""
    column, media_type = _COMPLETED_FILES[what]
    status, key = video["status"], video[column]
    if status != "completed" or key is None:
        raise ApiError(
            409,
            "Conflict",
            f"This video is {status}: its {what} exists once it has completed.",
            details={"status": status},
        )
    return await stored_file_response(
        request,
        storage,
        str(key),
        what=what,
        media_type=media_type,
        cache_control=cache_control,
        download_name=download_name,
    )


FILE_RESPONSES: dict[int | str, dict[str, Any]] = STATE_RESPONSES | {
    200: {"content": {"video/mp4": {}}, "description": "The whole file"},
    206: {"content": {"video/mp4": {}}, "description": "The requested byte range"},
    416: ERROR_RESPONSES[400] | {"description": "Range outside the file"},
}


@router.get("/{video_id}/content", response_class=StreamingResponse, responses=FILE_RESPONSES)
async def video_content(
    request: Request,
    video_id: str,
    caller: CallerDep,
    context: Context,
    connection: ReadConnection,
    download: Annotated[bool, Query(description="add Content-Disposition: attachment")] = False,
) -> Response:
    """The MP4; `Range` requests get 206 (416 outside the file); `?download=1` saves as a file."""
    video = await service.read_own(connection, user_id=caller.id, video_id=video_id)
    return await completed_file_response(
        request,
        context.storage,
        video,
        "video",
        cache_control=PRIVATE_FILE_CACHE,
        download_name=f"sora2-{video_id}.mp4" if download else None,
    )


REFERENCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "JPEG, the video's size"}
}


@router.get(
    "/{video_id}/input_reference",
    response_class=StreamingResponse,
    responses=REFERENCE_RESPONSES,
)
async def video_input_reference(
    request: Request,
    video_id: str,
    caller: CallerDep,
    context: Context,
    connection: ReadConnection,
) -> Response:
    """The image this video started from, as it was sent upstream (fitted to the video's size)."""
    video = await service.read_own(connection, user_id=caller.id, video_id=video_id)
    key = video["input_reference_key"]
    if key is None:
        raise ApiError(404, "Not Found", "This video did not start from an image.")
    return await stored_file_response(
        request,
        context.storage,
        str(key),
        what="starting image",
        media_type="image/jpeg",
        cache_control=PRIVATE_FILE_CACHE,
    )


THUMBNAIL_RESPONSES: dict[int | str, dict[str, Any]] = STATE_RESPONSES | {
    200: {"content": {"image/jpeg": {}}, "description": "JPEG"}
}


@router.get(
    "/{video_id}/thumbnail",
    response_class=StreamingResponse,
    responses=THUMBNAIL_RESPONSES,
)
async def video_thumbnail(
    request: Request, video_id: str, caller: CallerDep, context: Context, connection: ReadConnection
) -> Response:
    video = await service.read_own(connection, user_id=caller.id, video_id=video_id)
    return await completed_file_response(
        request, context.storage, video, "thumbnail", cache_control=PRIVATE_FILE_CACHE
    )
