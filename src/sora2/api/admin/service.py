"""Administrative changes, each written to the audit log in the same transaction as the change.

Shared by the admin api and the `sora2 user …` commands: both pass an `Actor`, both get the
same rules (no negative balance, no banning yourself, refunds exactly once) and the same trail.
Functions flush; the caller commits (the route, or the command).
"""

from __future__ import annotations

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.audit.service import Actor, record
from sora2.api.auth.models import AuthSession
from sora2.api.credits.service import apply_change, charge
from sora2.api.db.base import utcnow
from sora2.api.errors import ApiError
from sora2.api.jobs.models import Job
from sora2.api.users.models import User
from sora2.api.videos.models import Video
from sora2.api.videos.service import cancel_if_active


def user_not_found() -> ApiError:
    return ApiError(404, "Not Found", "No user has this id: check it against GET /api/admin/users.")


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise user_not_found()
    return user


async def find_user(session: AsyncSession, id_or_email: str) -> User:
    """By id, or by email (any case): what an operator types at a shell."""
    wanted = id_or_email.strip()
    user = (
        await session.execute(
            select(User).where(or_(User.id == wanted, User.email == wanted.lower()))
        )
    ).scalar_one_or_none()
    if user is None:
        raise ApiError(404, "Not Found", f"No user has the id or email {wanted!r}.")
    return user


async def list_users(
    session: AsyncSession, *, search: str | None, page: int, limit: int
) -> tuple[list[User], int]:
    where = []
    if search and search.strip():
        pattern = f"%{search.strip().lower()}%"
        where.append(
            or_(
                User.email.like(pattern), func.lower(User.nickname).like(pattern), User.id == search
            )
        )
    total = (
        await session.execute(select(func.count()).select_from(User).where(*where))
    ).scalar_one()
    rows = (
        await session.execute(
            select(User)
            .where(*where)
            .order_by(User.created_at.desc(), User.id)
            .offset((page - 1) * limit)
            .limit(limit)
        )
    ).scalars()
    return list(rows), int(total)


async def adjust_credits(
    session: AsyncSession, *, actor: Actor, user_id: str, amount: int, reason: str
) -> User:
    """Adds (or with a negative amount removes) credits: a ledger row of type `admin` whose
    description is the reason alone (the admin is kept in its own column), and an audit row."""
    user = await get_user(session, user_id)
    balance = await apply_change(
        session,
        user_id=user.id,
        amount=amount,
        kind="admin",
        description=reason,
        actor_id=actor.id,
    )
    if balance is None:
        current = (
            await session.execute(select(User.credits).where(User.id == user.id))
        ).scalar_one()
        raise ApiError(
            409,
            "Conflict",
            f"Removing {-amount} credits would leave a negative balance (balance {current}).",
            details={"balance": current},
        )
    record(
        session,
        actor=actor,
        action="user.credits",
        target_type="user",
        target_id=user.id,
        reason=reason,
        before={"credits": balance - amount},
        after={"credits": balance},
    )
    await session.flush()
    await session.refresh(user)
    return user


async def set_status(
    session: AsyncSession, *, actor: Actor, user_id: str, status: str, reason: str | None
) -> User:
    """Bans (ending every session of the account) or reinstates a user."""
    user = await get_user(session, user_id)
    if actor.id is not None and user.id == actor.id:
        raise ApiError(
            400,
            "Bad Request",
            "You cannot change the status of your own account.",
            details={"fields": [{"field": "status", "message": "not for your own account"}]},
        )
    before = user.status
    user.status = status
    if status == "banned":
        await session.execute(
            update(AuthSession)
            .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason="banned")
            .execution_options(synchronize_session=False)
        )
    record(
        session,
        actor=actor,
        action="user.ban" if status == "banned" else "user.unban",
        target_type="user",
        target_id=user.id,
        reason=reason,
        before={"status": before},
        after={"status": status},
    )
    await session.flush()
    return user


async def set_role(
    session: AsyncSession, *, actor: Actor, user_id: str, role: str, reason: str | None
) -> User:
    user = await get_user(session, user_id)
    before = user.role
    user.role = role
    record(
        session,
        actor=actor,
        action="user.role",
        target_type="user",
        target_id=user.id,
        reason=reason,
        before={"role": before},
        after={"role": role},
    )
    await session.flush()
    return user


def _video_not_found() -> ApiError:
    return ApiError(
        404, "Not Found", "No video has this id: check it against GET /api/admin/videos."
    )


async def cancel_video(
    session: AsyncSession, *, actor: Actor, video_id: str, reason: str | None
) -> Video:
    """Cancels a queued or running video of any user and refunds it (exactly once); 409 when it
    is already final. The audit row rides in the cancel's own transaction."""
    video = await session.get(Video, video_id)
    if video is None:
        raise _video_not_found()
    before = {"status": video.status}
    record(
        session,
        actor=actor,
        action="video.cancel",
        target_type="video",
        target_id=video.id,
        reason=reason,
        before=before,
        after={"status": "cancelled", "refunded": video.cost},
    )
    owner = video.user_id
    if not await cancel_if_active(session, user_id=owner, video_id=video_id):
        current = await session.get(Video, video_id)
        status = current.status if current else "deleted"
        raise ApiError(
            409,
            "Conflict",
            f"This video is already {status}: only queued or in-progress videos can be cancelled.",
            details={"status": status},
        )
    await session.execute(
        update(Video)
        .where(Video.id == video_id)
        .values(error_message="Cancelled by an administrator; the credits were refunded.")
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    refreshed = await session.get(Video, video_id, populate_existing=True)
    assert refreshed is not None
    return refreshed


async def retry_job(session: AsyncSession, *, actor: Actor, job_id: int, reason: str | None) -> Job:
    """Puts a failed job back in the queue for a fresh start. The failure refunded the video, so
    it is charged again (402 when the owner can no longer pay); 409 unless the job failed."""
    job = (
        await session.execute(select(Job).where(Job.id == job_id).with_for_update())
    ).scalar_one_or_none()
    if job is None:
        raise ApiError(
            404, "Not Found", "No job has this id: check it against GET /api/admin/jobs."
        )
    video = await session.get(Video, job.video_id)
    if job.status != "failed" or video is None or video.status != "failed":
        raise ApiError(
            409,
            "Conflict",
            f"This job is {job.status}: only failed jobs can be retried.",
            details={"status": job.status},
        )
    before = {"status": job.status, "attempts": job.attempts, "lastError": job.last_error}
    await charge(
        session,
        user_id=video.user_id,
        cost=video.cost,
        video_id=video.id,
        description=f"Retried: {video.model}, {video.seconds} s, {video.size}",
    )
    now = utcnow()
    job.status, job.attempts, job.run_after = "queued", 0, now
    job.lease_owner, job.lease_expires_at, job.finished_at = None, None, None
    # A new start, with a new key: the failed attempt's upstream job is in the stop outbox.
    job.start_key = job.start_sent_at = None
    video.status, video.progress = "queued", 0
    video.error_code = video.error_message = video.provider_job_id = None
    video.started_at = video.finished_at = None
    video.updated_at = now
    record(
        session,
        actor=actor,
        action="job.retry",
        target_type="job",
        target_id=str(job.id),
        reason=reason,
        before=before,
        after={"status": "queued", "attempts": 0, "charged": video.cost},
    )
    await session.flush()
    return job
