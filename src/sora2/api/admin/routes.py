"""`/api/admin`: stats, users, credits, bans, videos, jobs, audit, keys and configuration.

Every route needs the `admin` role (403 otherwise). Every change goes through `admin.service`,
which writes its audit row into the same transaction; the route commits once, at the end.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import func, or_, select

from sora2.api.admin import charts, service, stats
from sora2.api.admin.config import masked_settings
from sora2.api.admin.schemas import (
    AdminVideoOut,
    AdminVideoPage,
    AuditOut,
    AuditPage,
    ConfigOut,
    CreditAdjustment,
    DailyOut,
    JobOut,
    JobPage,
    ProviderKeyOut,
    ProviderOut,
    ReasonIn,
    StatsOut,
    StatusChange,
    UserPage,
)
from sora2.api.audit.service import Actor, AuditFilter, list_entries
from sora2.api.context import ApiContext
from sora2.api.db import transaction
from sora2.api.deps import AdminUser, Context, SessionDep
from sora2.api.errors import ERROR_RESPONSES
from sora2.api.jobs.models import JOB_STATUSES, Job
from sora2.api.providers.keys import mask_key
from sora2.api.schemas import PageNumber, PageSize
from sora2.api.users.models import User
from sora2.api.users.schemas import UserOut
from sora2.api.videos.models import Video
from sora2.api.videos.schemas import VideoStatus

router = APIRouter(prefix="/api/admin", tags=["admin"], responses=ERROR_RESPONSES)

CONFLICT: dict[int | str, dict[str, Any]] = {
    409: ERROR_RESPONSES[400] | {"description": "Not possible in this state"}
}
JobStatus = Annotated[str | None, Query(pattern="^(" + "|".join(JOB_STATUSES) + ")$")]


def _actor(admin: User) -> Actor:
    return Actor.of_user(user_id=admin.id, email=admin.email)


@router.get("/stats", response_model=StatsOut)
async def get_stats(_admin: AdminUser, session: SessionDep, context: Context) -> StatsOut:
    """Users, videos by status, credits issued/spent/refunded (in all and today), the queue's
    depth and oldest wait, workers and their last beat, and the provider's keys (masked)."""
    figures = await stats.overview(session)
    return StatsOut.model_validate({**figures, "provider": _provider(context)})


def _provider(context: ApiContext) -> ProviderOut:
    """The key pool as this process sees it; keys held only by worker processes are listed from
    the settings, state unknown."""
    settings = context.settings
    provider = context.provider
    health: dict[str, Any] = {}
    if provider is not None:
        try:
            health = provider.health()
        except Exception:  # a provider's health must not take the dashboard down
            health = {"status": "error"}
    now = datetime.now(UTC)
    keys = [_key(item, now) for item in health.get("keys", [])]
    if not keys and settings.video_provider == "openai":
        keys = [ProviderKeyOut(key=mask_key(k), state="unknown") for k in settings.openai_api_keys]
    return ProviderOut(
        name=provider.name if provider is not None else settings.video_provider,
        status=str(health.get("status", "ok" if provider is not None else "unavailable")),
        keys=keys,
    )


def _key(item: dict[str, Any], now: datetime) -> ProviderKeyOut:
    state = item.get("state", "unknown")
    resting = item.get("restingForSeconds")
    return ProviderKeyOut(
        key=str(item.get("key", "")),
        state=state if state in ("ok", "resting", "disabled") else "unknown",
        resting_until=now + timedelta(seconds=float(resting)) if resting is not None else None,
        reason=item.get("reason"),
        successes=item.get("successes"),
        rate_limits=item.get("rateLimits"),
    )


@router.get("/stats/daily", response_model=DailyOut)
async def get_daily(
    _admin: AdminUser,
    session: SessionDep,
    days: Annotated[int, Query(ge=1, le=90, description="how many days back, today included")] = 30,
) -> DailyOut:
    """Per UTC day: videos by status, credits spent and refunded, mean queue wait; and the three
    charts as inline SVG."""
    series = await stats.daily(session, days=days)
    drawn = {
        "videos": charts.stacked_bars(
            f"Videos per day by status, last {days} days", series.days, series.videos
        ),
        "credits": charts.stacked_bars(
            f"Credits spent and refunded per day, last {days} days",
            series.days,
            {"spent": series.credits_spent, "refunded": series.credits_refunded},
        ),
        "queueWait": charts.line(
            f"Mean queue wait per day, last {days} days",
            series.days,
            series.queue_wait_seconds,
            unit=" s",
        ),
    }
    return DailyOut(
        days=[day.isoformat() for day in series.days],
        videos=series.videos,
        credits_spent=series.credits_spent,
        credits_refunded=series.credits_refunded,
        queue_wait_seconds=series.queue_wait_seconds,
        charts=drawn,
    )


@router.get("/users", response_model=UserPage)
async def list_users(
    _admin: AdminUser,
    session: SessionDep,
    search: Annotated[
        str | None, Query(max_length=100, description="part of an email or nickname, or an id")
    ] = None,
    page: PageNumber = 1,
    limit: PageSize = 20,
) -> UserPage:
    rows, total = await service.list_users(session, search=search, page=page, limit=limit)
    return UserPage(
        items=[UserOut.model_validate(u) for u in rows], page=page, limit=limit, total=total
    )


@router.post("/users/{user_id}/credits", response_model=UserOut, responses=CONFLICT)
async def adjust_credits(
    user_id: str, body: CreditAdjustment, admin: AdminUser, session: SessionDep
) -> UserOut:
    """Add or remove credits: a ledger entry of type `admin` whose description is the reason, and
    an audit row, in one transaction. The user sees the reason, never who made the change."""
    user = await service.adjust_credits(
        session, actor=_actor(admin), user_id=user_id, amount=body.amount, reason=body.reason
    )
    return UserOut.model_validate(user)


@router.put("/users/{user_id}/status", response_model=UserOut)
async def change_status(
    user_id: str, body: StatusChange, admin: AdminUser, session: SessionDep
) -> UserOut:
    """Ban (ends every session of the account) or reinstate a user."""
    user = await service.set_status(
        session, actor=_actor(admin), user_id=user_id, status=body.status, reason=body.reason
    )
    return UserOut.model_validate(user)


@router.get("/videos", response_model=AdminVideoPage)
async def list_videos(
    _admin: AdminUser,
    session: SessionDep,
    status: Annotated[VideoStatus | None, Query(description="only videos in this state")] = None,
    user: Annotated[
        str | None, Query(max_length=320, description="a user's id, or part of their email")
    ] = None,
    page: PageNumber = 1,
    limit: PageSize = 20,
) -> AdminVideoPage:
    """Everyone's videos, newest first."""
    where = []
    if status is not None:
        where.append(Video.status == status)
    if user and user.strip():
        wanted = user.strip()
        where.append(or_(Video.user_id == wanted, User.email.like(f"%{wanted.lower()}%")))
    base = select(Video, User.email).join(User, User.id == Video.user_id).where(*where)
    total = (await session.execute(select(func.count()).select_from(base.subquery()))).scalar_one()
    rows = await session.execute(
        base.order_by(Video.created_at.desc(), Video.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    items = [
        AdminVideoOut.model_validate({**_columns(video), "user_email": email})
        for video, email in rows
    ]
    return AdminVideoPage(items=items, page=page, limit=limit, total=int(total))


def _columns(row: Any) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


@router.post("/videos/{video_id}/cancel", response_model=AdminVideoOut, responses=CONFLICT)
async def cancel_video(
    video_id: str,
    admin: AdminUser,
    session: SessionDep,
    context: Context,
    body: ReasonIn | None = None,
) -> AdminVideoOut:
    """Cancel anyone's queued or running video; its owner is refunded (exactly once)."""
    video = await service.cancel_video(
        session, actor=_actor(admin), video_id=video_id, reason=body.reason if body else None
    )
    transaction.after_commit(session, lambda: context.events.notify(video_id))
    return AdminVideoOut.model_validate(_columns(video))


@router.get("/jobs", response_model=JobPage)
async def list_jobs(
    _admin: AdminUser,
    session: SessionDep,
    status: JobStatus = None,
    page: PageNumber = 1,
    limit: PageSize = 20,
) -> JobPage:
    """The queue, newest first; failed jobs carry their last error."""
    where = [Job.status == status] if status else []
    total = (
        await session.execute(select(func.count()).select_from(Job).where(*where))
    ).scalar_one()
    rows = await session.execute(
        select(Job, Video.user_id, User.email, Video.status, Video.error_message)
        .join(Video, Video.id == Job.video_id)
        .join(User, User.id == Video.user_id)
        .where(*where)
        .order_by(Job.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    items = [
        JobOut.model_validate(
            {
                **_columns(job),
                "user_id": user_id,
                "user_email": email,
                "video_status": video_status,
                "video_error": video_error,
            }
        )
        for job, user_id, email, video_status, video_error in rows
    ]
    return JobPage(items=items, page=page, limit=limit, total=int(total))


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobOut,
    responses=CONFLICT | {402: ERROR_RESPONSES[400] | {"description": "Owner cannot pay"}},
)
async def retry_job(
    job_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    admin: AdminUser,
    session: SessionDep,
    context: Context,
    body: ReasonIn | None = None,
) -> JobOut:
    """Queue a failed job again from the start; its video is charged again (the failure had
    refunded it)."""
    job = await service.retry_job(
        session, actor=_actor(admin), job_id=job_id, reason=body.reason if body else None
    )
    transaction.after_commit(session, lambda: context.events.notify(job.video_id))
    return JobOut.model_validate(_columns(job))


@router.get("/audit", response_model=AuditPage)
async def list_audit(
    _admin: AdminUser,
    session: SessionDep,
    actor: Annotated[str | None, Query(max_length=400, description="part of the actor")] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="e.g. user.credits, user.ban, job.retry")
    ] = None,
    target_type: Annotated[
        str | None, Query(alias="targetType", max_length=32, description="user, video or job")
    ] = None,
    target_id: Annotated[str | None, Query(alias="targetId", max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    page: PageNumber = 1,
    limit: PageSize = 50,
) -> AuditPage:
    """Who did what to whom, when and why: every admin action (api, pages and `sora2 user`),
    newest first."""
    where = AuditFilter(
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        since=_utc(since),
        until=_utc(until),
    )
    rows, total = await list_entries(session, where=where, page=page, limit=limit)
    return AuditPage(
        items=[AuditOut.model_validate(row) for row in rows], page=page, limit=limit, total=total
    )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@router.get("/config", response_model=ConfigOut)
async def get_config(_admin: AdminUser, context: Context) -> ConfigOut:
    """The api's settings as it runs, every secret masked."""
    return ConfigOut(settings=masked_settings(context.settings))
