"""The jobs table as a queue: claim under a lease, renew it, and settle a job's outcome.

Claiming takes the oldest due job (queued and due, or running with an expired lease, i.e. its
worker died) with `FOR UPDATE SKIP LOCKED` on PostgreSQL so concurrent workers never take the same
row; on SQLite the `BEGIN IMMEDIATE` write lock serialises claims. Every later write checks that
this worker still holds the lease, so a worker that stalled past its lease cannot overwrite the
one that took over. Outcomes that move money (failure → refund) change the video's status with a
conditional UPDATE and write the refund in the same transaction: it happens at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from sora2.api.credits.service import refund
from sora2.api.db import Database, utcnow
from sora2.api.jobs.models import Job, WorkerBeat
from sora2.api.providers.base import GenerationRequest, RemixSource
from sora2.api.videos.models import ACTIVE_STATUSES, Video


async def _remix_source(session: AsyncSession, video: Video) -> RemixSource | None:
    """What a remix needs of its source: the provider's id for it and its prompt. A source
    deleted since the remix was asked for leaves an empty id, which no provider knows (the video
    then fails, refunded, saying so)."""
    if video.remix_of is None:
        return None
    source = await session.get(Video, video.remix_of)
    if source is None:
        return RemixSource(job_id="", prompt="")
    return RemixSource(job_id=source.provider_job_id or "", prompt=source.prompt)


class LeaseLost(Exception):
    """Another worker owns this job now (ours expired): stop touching it."""


class JobGone(LeaseLost):
    """The video (and with it its job) was deleted while the job ran."""


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: int
    video_id: str
    user_id: str
    attempts: int
    provider_job_id: str | None
    request: GenerationRequest

    @property
    def video_key(self) -> str:
        return f"videos/{self.user_id}/{self.video_id}.mp4"

    @property
    def thumbnail_key(self) -> str:
        return f"thumbnails/{self.user_id}/{self.video_id}.jpg"


class JobQueue:
    def __init__(self, database: Database, *, worker_id: str, lease_seconds: float) -> None:
        self.database = database
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)

    def _owned(self, job_id: int) -> list[ColumnElement[bool]]:
        return [Job.id == job_id, Job.lease_owner == self.worker_id, Job.status == "running"]

    async def claim(self) -> ClaimedJob | None:
        """The next due job, leased to this worker (None when nothing is due)."""
        while True:
            claimed, skipped = await self._claim_one()
            if not skipped:
                return claimed

    async def _claim_one(self) -> tuple[ClaimedJob | None, bool]:
        """(job, False); (None, False) when nothing is due; (None, True) for a job settled here."""
        now = utcnow()
        async with self.database.session() as session:
            query = (
                select(Job.id)
                .where(
                    or_(
                        and_(Job.status == "queued", Job.run_after <= now),
                        and_(Job.status == "running", Job.lease_expires_at < now),
                    )
                )
                .order_by(Job.run_after, Job.id)
                .limit(1)
            )
            if not self.database.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            job_id = (await session.execute(query)).scalar_one_or_none()
            if job_id is None:
                return None, False
            job = (
                await session.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(
                        status="running",
                        lease_owner=self.worker_id,
                        lease_expires_at=now + self.lease,
                        attempts=Job.attempts + 1,
                        updated_at=now,
                    )
                    .returning(Job.video_id, Job.attempts)
                    .execution_options(synchronize_session=False)
                )
            ).one()
            video = await session.get(Video, job.video_id)
            if video is None or (video.status not in ACTIVE_STATUSES and not video.provider_job_id):
                # Cancelled before anyone started it upstream: nothing left to do.
                await self._finish(session, job_id, "done", "video no longer active")
                await session.commit()
                return None, True
            if video.status == "queued":
                video.status, video.started_at = "in_progress", now
            remix = await _remix_source(session, video)
            await session.commit()
            return self._claimed(job_id, job.attempts, video, remix), False

    @staticmethod
    def _claimed(
        job_id: int, attempts: int, video: Video, remix: RemixSource | None = None
    ) -> ClaimedJob:
        return ClaimedJob(
            job_id=job_id,
            video_id=video.id,
            user_id=video.user_id,
            attempts=attempts,
            provider_job_id=video.provider_job_id,
            request=GenerationRequest(
                prompt=video.prompt,
                model=video.model,
                seconds=video.seconds,
                size=video.size,
                input_reference_key=video.input_reference_key,
                remix=remix,
            ),
        )

    async def renew_lease(self, job: ClaimedJob) -> bool:
        async with self.database.session() as session:
            renewed = await session.execute(
                update(Job)
                .where(*self._owned(job.job_id))
                .values(lease_expires_at=utcnow() + self.lease)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            held = renewed.first() is not None
            await session.commit()
            return held

    async def _hold(self, session: AsyncSession, job: ClaimedJob) -> None:
        held = await session.execute(
            update(Job)
            .where(*self._owned(job.job_id))
            .values(lease_expires_at=utcnow() + self.lease)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if held.first() is None:
            exists = (await session.execute(select(Job.id).where(Job.id == job.job_id))).first()
            await session.rollback()
            raise (LeaseLost if exists else JobGone)(job.job_id)

    async def record_provider_job(self, job: ClaimedJob, provider_job_id: str) -> bool:
        """Stores the provider's id before anything else; False if the video is no longer active."""
        async with self.database.session() as session:
            await self._hold(session, job)
            stored = await session.execute(
                update(Video)
                .where(Video.id == job.video_id, Video.status.in_(ACTIVE_STATUSES))
                .values(provider_job_id=provider_job_id, updated_at=utcnow())
                .returning(Video.id)
                .execution_options(synchronize_session=False)
            )
            active = stored.first() is not None
            await session.commit()
            return active

    async def record_progress(self, job: ClaimedJob, progress: int) -> bool:
        """Saves progress; False when the video was cancelled or deleted meanwhile."""
        async with self.database.session() as session:
            await self._hold(session, job)
            changed = await session.execute(
                update(Video)
                .where(Video.id == job.video_id, Video.status == "in_progress")
                .values(progress=max(0, min(99, progress)), updated_at=utcnow())
                .returning(Video.id)
                .execution_options(synchronize_session=False)
            )
            active = changed.first() is not None
            await session.commit()
            return active

    async def complete(self, job: ClaimedJob, *, video_bytes: int) -> bool:
        """Marks the video completed with its files; False if it was cancelled meanwhile."""
        async with self.database.session() as session:
            await self._hold(session, job)
            changed = await session.execute(
                update(Video)
                .where(Video.id == job.video_id, Video.status == "in_progress")
                .values(
                    status="completed",
                    progress=100,
                    video_key=job.video_key,
                    thumbnail_key=job.thumbnail_key,
                    video_bytes=video_bytes,
                    finished_at=utcnow(),
                    updated_at=utcnow(),
                )
                .returning(Video.id)
                .execution_options(synchronize_session=False)
            )
            completed = changed.first() is not None
            await self._finish(session, job.job_id, "done", None if completed else "cancelled")
            await session.commit()
            return completed

    async def fail(self, job: ClaimedJob, *, code: str, message: str) -> bool:
        """Fails the video and refunds it in one transaction; False if it was already final."""
        async with self.database.session() as session:
            await self._hold(session, job)
            row = (
                await session.execute(
                    update(Video)
                    .where(Video.id == job.video_id, Video.status.in_(ACTIVE_STATUSES))
                    .values(
                        status="failed",
                        error_code=code[:64],
                        error_message=message[:500],
                        finished_at=utcnow(),
                        updated_at=utcnow(),
                    )
                    .returning(Video.cost)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if row is not None:
                await refund(
                    session,
                    user_id=job.user_id,
                    amount=row.cost,
                    video_id=job.video_id,
                    why=f"Generation failed ({code[:64]})",
                )
            await self._finish(session, job.job_id, "failed", f"{code}: {message}")
            await session.commit()
            return row is not None

    async def retry_later(
        self, job: ClaimedJob, *, delay_seconds: float, error: str, spend_attempt: bool = True
    ) -> None:
        """Back to the queue after `delay_seconds`; a mere wait gives its claim back."""
        async with self.database.session() as session:
            await self._hold(session, job)
            await session.execute(
                update(Job)
                .where(Job.id == job.job_id)
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_expires_at=None,
                    run_after=utcnow() + timedelta(seconds=delay_seconds),
                    last_error=error[:500],
                    attempts=Job.attempts if spend_attempt else Job.attempts - 1,
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()

    async def finish_cancelled(self, job: ClaimedJob) -> None:
        async with self.database.session() as session:
            await self._hold(session, job)
            await self._finish(session, job.job_id, "done", "cancelled")
            await session.commit()

    async def is_active(self, job: ClaimedJob) -> bool:
        async with self.database.session() as session:
            status = (
                await session.execute(select(Video.status).where(Video.id == job.video_id))
            ).scalar_one_or_none()
            return status in ACTIVE_STATUSES

    async def release_all(self) -> None:
        """On a clean stop: our running jobs go back to the queue, to be resumed at once."""
        async with self.database.session() as session:
            await session.execute(
                update(Job)
                .where(Job.lease_owner == self.worker_id, Job.status == "running")
                .values(
                    status="queued", lease_owner=None, lease_expires_at=None, run_after=utcnow()
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()

    @staticmethod
    async def _finish(session: AsyncSession, job_id: int, status: str, note: str | None) -> None:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=status,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=utcnow(),
                last_error=note[:500] if note else None,
            )
            .execution_options(synchronize_session=False)
        )

    async def beat(self, *, hostname: str, pid: int) -> None:
        """Records that this worker is alive (what `/api/health` reports as heartbeat age)."""
        async with self.database.session() as session:
            seen = await session.execute(
                update(WorkerBeat)
                .where(WorkerBeat.id == self.worker_id)
                .values(last_seen_at=utcnow())
                .returning(WorkerBeat.id)
                .execution_options(synchronize_session=False)
            )
            if seen.first() is None:
                session.add(WorkerBeat(id=self.worker_id, hostname=hostname, pid=pid))
            await session.commit()

    async def forget_worker(self) -> None:
        async with self.database.session() as session:
            await session.execute(delete(WorkerBeat).where(WorkerBeat.id == self.worker_id))
            await session.commit()
