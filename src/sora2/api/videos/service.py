"""Video rules: charge-and-queue in one transaction, cancel with exactly one refund, delete.

Every state change that moves money is a conditional UPDATE on the video's status, so of two
racers (two cancels, a cancel and the worker's completion) exactly one changes the row, and
only that one writes the refund, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from sora2.api.credits.service import charge, refund
from sora2.api.db import transaction
from sora2.api.db.base import utcnow
from sora2.api.errors import ApiError, not_found
from sora2.api.jobs.models import Job
from sora2.api.jobs.stops import stop_video_upstream
from sora2.api.storage import Storage
from sora2.api.videos.models import ACTIVE_STATUSES, Video
from sora2.catalog import Catalog, Model


@dataclass(frozen=True, slots=True)
class Choice:
    """A model with a length and a size it makes: what a create may ask for."""

    model: Model
    seconds: int
    size: str

    @property
    def cost(self) -> int:
        return self.model.cost(self.seconds)


def choose(catalog: Catalog, *, model: str | None, seconds: int | None, size: str | None) -> Choice:
    """The request checked against its model's catalog entry (omitted fields take the model's
    first choice); a 422 naming the field and what that model allows."""
    chosen = catalog.default if model is None else catalog.get(model)
    if chosen is None:
        offered = ", ".join(catalog.models)
        raise _invalid_choice(
            "model",
            f"{model!r} is not offered; choose one of {offered} (GET /api/models lists them)",
            allowed=list(catalog.models),
        )
    seconds = chosen.default_seconds if seconds is None else seconds
    if (refusal := chosen.seconds_refusal(seconds)) is not None:
        raise _invalid_choice("seconds", refusal, allowed=list(chosen.seconds))
    size = chosen.default_size if size is None else size
    if (refusal := chosen.size_refusal(size)) is not None:
        raise _invalid_choice("size", refusal, allowed=list(chosen.sizes))
    return Choice(chosen, seconds, size)


def _invalid_choice(field: str, message: str, *, allowed: list[Any]) -> ApiError:
    return ApiError(
        422,
        "Validation Error",
        f"Invalid request: {field}: {message}.",
        details={"fields": [{"field": field, "message": message}], "allowed": allowed},
    )


def check_image_input(catalog: Catalog, model: Model) -> None:
    """An image is only for models that take one (`image_input`); say which do."""
    if model.image_input:
        return
    takers = [m.id for m in catalog.models.values() if m.image_input]
    fix = f"choose {', '.join(takers)}" if takers else "no model here takes one"
    message = f"{model.id} does not start from an image; send no input_reference, or {fix}"
    raise ApiError(
        422,
        "Validation Error",
        f"Invalid request: input_reference: {message}.",
        details={"fields": [{"field": "input_reference", "message": message}], "allowed": takers},
    )


def check_remix(catalog: Catalog, source: Video) -> None:
    """A remix needs a completed source whose model offers remixing; else a 4xx saying why."""
    if source.status != "completed":
        raise ApiError(
            409,
            "Conflict",
            f"This video is {source.status}: only a completed video can be remixed.",
            details={"status": source.status},
        )
    model = catalog.get(source.model)
    if model is None:
        raise ApiError(
            422,
            "Validation Error",
            f"{source.model} is no longer offered, so its videos cannot be remixed; make a new "
            "video with one of the models on offer.",
            details={"model": source.model, "allowed": list(catalog.models)},
        )
    if not model.remix:
        remixable = [m.id for m in catalog.models.values() if m.remix]
        which = f" ({', '.join(remixable)} can)" if remixable else ""
        raise ApiError(
            422,
            "Validation Error",
            f"{model.id} does not offer remix{which}; regenerate or make a new video instead.",
            details={"model": model.id, "allowed": remixable},
        )


async def create(
    session: AsyncSession,
    *,
    user_id: str,
    prompt: str,
    choice: Choice,
    remix_of: Video | None = None,
) -> tuple[Video, int]:
    """Inserts the video and its job and charges for it, in the caller's transaction: the caller
    commits all of it together (with its idempotency key, if any), or nothing."""
    video = Video(
        user_id=user_id,
        prompt=prompt,
        model=choice.model.id,
        seconds=choice.seconds,
        size=choice.size,
        cost=choice.cost,
        provider=choice.model.provider,
        remix_of=remix_of.id if remix_of is not None else None,
    )
    session.add(video)
    await session.flush()
    balance = await charge(
        session,
        user_id=user_id,
        cost=video.cost,
        video_id=video.id,
        description=f"{video.model}, {video.seconds} s, {video.size}",
    )
    session.add(Job(video_id=video.id))
    await session.flush()  # the job and the charge's ledger row together
    return video, balance


async def get_own(session: AsyncSession, *, user_id: str, video_id: str) -> Video:
    video = await session.get(Video, video_id)
    if video is None or video.user_id != user_id:
        raise not_found("This video")
    return video


# Read routes use Core statements built once with bound parameters (see `sora2.api.deps`): rows
# come back as plain dicts, which pydantic validates several times faster than ORM objects.
_COLUMNS = tuple(Video.__table__.c)
_OWN = Video.user_id == bindparam("user_id")
_ONE_OWN = select(*_COLUMNS).where(Video.id == bindparam("video_id"), _OWN)
_NEWEST_FIRST = (Video.created_at.desc(), Video.id.desc())


def _listing(*where: ColumnElement[bool]) -> tuple[Select[Any], Select[Any]]:
    """The count and one page of the caller's videos matching `where`."""
    return (
        select(func.count()).select_from(Video).where(_OWN, *where),
        select(*_COLUMNS)
        .where(_OWN, *where)
        .order_by(*_NEWEST_FIRST)
        .offset(bindparam("offset"))
        .limit(bindparam("limit")),
    )


_LISTING_ALL = _listing()
_LISTING_BY_STATUS = _listing(Video.status == bindparam("status"))


async def read_own(connection: AsyncConnection, *, user_id: str, video_id: str) -> dict[str, Any]:
    """The caller's video as a dict of its columns; 404 when it is missing or someone else's."""
    row = (await connection.execute(_ONE_OWN, {"video_id": video_id, "user_id": user_id})).first()
    if row is None:
        raise not_found("This video")
    return row._asdict()


async def list_own(
    connection: AsyncConnection, *, user_id: str, status: str | None, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    count, rows = _LISTING_ALL if status is None else _LISTING_BY_STATUS
    params = {"user_id": user_id, "status": status, "offset": (page - 1) * limit, "limit": limit}
    total = (await connection.execute(count, params)).scalar_one()
    page_rows = await connection.execute(rows, params)
    return [row._asdict() for row in page_rows], int(total)


async def cancel(session: AsyncSession, *, user_id: str, video_id: str) -> Video:
    """Cancels a queued or running video and refunds it, once; 409 when it is already final."""
    cancelled = await cancel_if_active(session, user_id=user_id, video_id=video_id)
    video = await get_own(session, user_id=user_id, video_id=video_id)
    if not cancelled:
        raise ApiError(
            409,
            "Conflict",
            f"This video is already {video.status}: "
            "only queued or in-progress videos can be cancelled.",
            details={"status": video.status},
        )
    return video


async def _lock_job_first(session: AsyncSession, video_id: str) -> None:
    """Take the video's job row before the video row, in the order a worker takes them (job, then
    video), so a cancel or delete racing a worker waits instead of deadlocking on PostgreSQL.
    (SQLite serialises writers and ignores FOR UPDATE.)"""
    await session.execute(select(Job.id).where(Job.video_id == video_id).with_for_update())


async def cancel_if_active(session: AsyncSession, *, user_id: str, video_id: str) -> bool:
    """The refund-exactly-once step: True if this call moved the video to `cancelled`."""
    await _lock_job_first(session, video_id)
    row = (
        await session.execute(
            update(Video)
            .where(
                Video.id == video_id, Video.user_id == user_id, Video.status.in_(ACTIVE_STATUSES)
            )
            .values(
                status="cancelled",
                finished_at=utcnow(),
                updated_at=utcnow(),
                error_code="cancelled",
                error_message="Cancelled by you; the credits were refunded.",
            )
            .returning(Video.cost)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if row is None:
        return False
    await refund(session, user_id=user_id, amount=row.cost, video_id=video_id, why="Cancelled")
    # Its upstream job (if one was made, or may have been) goes to the outbox that workers drain.
    video = await session.get(Video, video_id)
    assert video is not None
    await stop_video_upstream(session, video, reason="cancelled")
    # A job nobody has claimed yet is simply finished; a running one is finished by its worker,
    # which sees the status between steps.
    await session.execute(
        update(Job)
        .where(Job.video_id == video_id, Job.status == "queued")
        .values(status="done", finished_at=utcnow(), last_error="cancelled")
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    session.expire_all()
    return True


async def delete(session: AsyncSession, *, storage: Storage, user_id: str, video_id: str) -> None:
    """Deletes a video and its files; one still in the works is cancelled and refunded first."""
    await get_own(session, user_id=user_id, video_id=video_id)
    await cancel_if_active(session, user_id=user_id, video_id=video_id)
    video = await get_own(session, user_id=user_id, video_id=video_id)
    if video.status == "completed":
        await stop_video_upstream(session, video, reason="deleted")  # it holds our copy's source
    keys = [key for key in (video.video_key, video.thumbnail_key, video.input_reference_key) if key]
    await _lock_job_first(session, video_id)  # deleting the video deletes its job too
    await session.delete(video)
    await session.flush()
    # The files go once no row names them any more: never if the delete rolls back.
    transaction.after_commit(session, lambda: storage.forget(keys))
