"""The jobs table as a queue: claim under a lease, renew it, and settle a job's outcome.

Claiming takes the oldest due job (queued and due, or running with an expired lease, i.e. its
worker died) with `FOR UPDATE SKIP LOCKED` on PostgreSQL so concurrent workers never take the same
row; on SQLite the `BEGIN IMMEDIATE` write lock serialises claims. Every later write checks that
this worker still holds the lease, so a worker that stalled past its lease cannot overwrite the
one that took over. Outcomes that move money (failure → refund) change the video's status with a
conditional UPDATE and write the refund in the same transaction: it happens at most once.

Leases and deadlines are judged on the database's clock (`database_now`), never a worker's. A
claim counts as an attempt, so a job whose worker keeps dying fails (and is refunded) after
`JOB_MAX_ATTEMPTS` claims, like one that keeps failing; a video not final `JOB_DEADLINE_SECONDS`
after it was created fails at its next claim (the worker also stops it when the time runs out).

Starting upstream is guarded by the job's `start_key` and `start_sent_at` (see `prepare_start`),
and recording the upstream id (`record_provider_job`) does not need the lease: a create that
succeeded is never forgotten because its worker lost the job meanwhile.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from sora2.api.credits.service import refund
from sora2.api.db import Database, utcnow
from sora2.api.jobs.models import Job, WorkerBeat
from sora2.api.jobs.stops import (
    database_now,
    held_ids,
    request_of,
    search_for,
    stop_later,
    stop_video_upstream,
)
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
    provider: str = ""
    seconds_left: float = float("inf")  # until the video's deadline, on the database's clock

    @property
    def video_key(self) -> str:
        return f"videos/{self.user_id}/{self.video_id}.mp4"

    @property
    def thumbnail_key(self) -> str:
        return f"thumbnails/{self.user_id}/{self.video_id}.jpg"


@dataclass(frozen=True, slots=True)
class StartTicket:
    """What a worker needs to send a create: the video's key, and since when an earlier create
    went unanswered (None: no job can exist upstream yet)."""

    key: str
    unsure_since: datetime | None


@dataclass(frozen=True, slots=True)
class Recorded:
    """Where a started upstream job ended up: `follow` it, or None (the video needs it no more,
    it was stopped; or another video holds it and this video must start again)."""

    follow: str | None
    outcome: str  # "recorded", "duplicate", "inactive", "gone", "taken"


class JobQueue:
    def __init__(
        self,
        database: Database,
        *,
        worker_id: str,
        lease_seconds: float,
        max_attempts: int = 5,
        deadline_seconds: float = 10_800,
    ) -> None:
        self.database = database
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.deadline = timedelta(seconds=deadline_seconds)

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
        async with self.database.transaction() as session:
            now = await database_now(session)
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
            if video is None or video.status not in ACTIVE_STATUSES:
                # Cancelled or deleted: its upstream job (if any) is in the outbox already.
                await self._finish(session, job_id, "done", "video no longer active", now)
                return None, True
            ended = self._why_it_ends(video, job.attempts, now)
            if ended is not None:
                await self._fail_in(session, job_id, video, *ended, now=now)
                return None, True
            if video.status == "queued":
                video.status, video.started_at = "in_progress", now
            remix = await _remix_source(session, video)
            seconds_left = (video.created_at + self.deadline - now).total_seconds()
            return self._claimed(job_id, job.attempts, video, seconds_left, remix), False

    def _why_it_ends(self, video: Video, attempts: int, now: datetime) -> tuple[str, str] | None:
        """(code, message) when a claimed job must fail instead of running again."""
        if video.created_at + self.deadline <= now:
            return (
                "deadline_exceeded",
                "This video was not ready in time; your credits were refunded.",
            )
        if attempts > self.max_attempts:
            # Every earlier claim ended without an outcome: its worker died or lost the job.
            return (
                "worker_lost",
                f"The generation was interrupted {attempts - 1} times; your credits were refunded.",
            )
        return None

    @staticmethod
    def _claimed(
        job_id: int,
        attempts: int,
        video: Video,
        seconds_left: float,
        remix: RemixSource | None = None,
    ) -> ClaimedJob:
        return ClaimedJob(
            job_id=job_id,
            video_id=video.id,
            user_id=video.user_id,
            attempts=attempts,
            provider_job_id=video.provider_job_id,
            request=request_of(video, remix),
            provider=video.provider or "",
            seconds_left=seconds_left,
        )

    async def renew_lease(self, job: ClaimedJob) -> bool:
        async with self.database.transaction() as session:
            now = await database_now(session)
            renewed = await session.execute(
                update(Job)
                .where(*self._owned(job.job_id))
                .values(lease_expires_at=now + self.lease)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            held = renewed.first() is not None
            return held

    async def _hold(self, session: AsyncSession, job: ClaimedJob) -> datetime:
        """Renews the lease inside `session`'s transaction (the database's now), or raises."""
        now = await database_now(session)
        held = await session.execute(
            update(Job)
            .where(*self._owned(job.job_id))
            .values(lease_expires_at=now + self.lease)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if held.first() is None:
            exists = (await session.execute(select(Job.id).where(Job.id == job.job_id))).first()
            raise (LeaseLost if exists else JobGone)(job.job_id)
        return now

    async def prepare_start(self, job: ClaimedJob) -> StartTicket:
        """Before a create is sent: the video's key (made once), and `start_sent_at` stamped if
        it was clear, committed first, so whoever comes next knows a job may exist upstream."""
        async with self.database.transaction() as session:
            now = await self._hold(session, job)
            key, sent_at = (
                await session.execute(
                    select(Job.start_key, Job.start_sent_at).where(Job.id == job.job_id)
                )
            ).one()
            key = key or uuid.uuid4().hex
            await session.execute(
                update(Job)
                .where(Job.id == job.job_id)
                .values(start_key=key, start_sent_at=sent_at or now)
                .execution_options(synchronize_session=False)
            )
            return StartTicket(key=key, unsure_since=sent_at)

    async def start_refused(self, job: ClaimedJob, ticket: StartTicket) -> None:
        """The provider answered the create with a refusal: no job was made by this attempt."""
        if ticket.unsure_since is not None:
            return  # an earlier create is still unanswered
        async with self.database.transaction() as session:
            await session.execute(
                update(Job)
                .where(Job.id == job.job_id)
                .values(start_sent_at=None)
                .execution_options(synchronize_session=False)
            )

    async def unheld(self, ids: list[str]) -> list[str]:
        """`ids` less those a live or completed video holds (adoptable upstream jobs)."""
        async with self.database.read_session() as session:
            held = await held_ids(session, ids)
        return [job_id for job_id in ids if job_id not in held]

    async def record_provider_job(
        self, job: ClaimedJob, provider_job_id: str, *, unsure_since: datetime | None = None
    ) -> Recorded:
        """Stores the upstream id the create answered with, whether or not this worker still
        holds the lease; a job the video cannot use goes to the outbox in the same transaction.
        `unsure_since`: an earlier create was never answered, so a duplicate may appear: a
        search for it is queued too."""
        async with self.database.transaction() as session:
            now = await database_now(session)
            await session.execute(select(Job.id).where(Job.id == job.job_id).with_for_update())
            video = await session.get(Video, job.video_id, with_for_update=True)
            if video is None or video.status not in ACTIVE_STATUSES:
                await stop_later(
                    session,
                    provider=job.provider,
                    reason="deleted" if video is None else video.status,
                    run_after=now,
                    provider_job_id=provider_job_id,
                )
                await self._clear_start(session, job)
                return Recorded(None, "gone" if video is None else "inactive")
            if video.provider_job_id not in (None, provider_job_id):
                await stop_later(
                    session,
                    provider=job.provider,
                    reason="duplicate",
                    run_after=now,
                    provider_job_id=provider_job_id,
                )
                return Recorded(video.provider_job_id, "duplicate")
            holder = (
                await session.execute(
                    select(Video.id).where(
                        Video.provider_job_id == provider_job_id, Video.id != job.video_id
                    )
                )
            ).first()
            if holder is not None:
                # Another video adopted it (same request, its create unanswered): start anew.
                await session.execute(
                    update(Job)
                    .where(Job.id == job.job_id)
                    .values(start_key=None)
                    .execution_options(synchronize_session=False)
                )
                return Recorded(None, "taken")
            video.provider_job_id, video.updated_at = provider_job_id, now
            await self._clear_start(session, job)
            if unsure_since is not None:
                await stop_later(
                    session,
                    provider=job.provider,
                    reason="duplicate",
                    run_after=now,
                    search=search_for(job.request, unsure_since),
                )
            return Recorded(provider_job_id, "recorded")

    @staticmethod
    async def _clear_start(session: AsyncSession, job: ClaimedJob) -> None:
        await session.execute(
            update(Job)
            .where(Job.id == job.job_id)
            .values(start_sent_at=None)
            .execution_options(synchronize_session=False)
        )

    async def record_progress(self, job: ClaimedJob, progress: int) -> bool:
        """Saves progress; False when the video was cancelled or deleted meanwhile."""
        async with self.database.transaction() as session:
            await self._hold(session, job)
            changed = await session.execute(
                update(Video)
                .where(Video.id == job.video_id, Video.status == "in_progress")
                .values(progress=max(0, min(99, progress)), updated_at=utcnow())
                .returning(Video.id)
                .execution_options(synchronize_session=False)
            )
            active = changed.first() is not None
            return active

    async def complete(self, job: ClaimedJob, *, video_bytes: int) -> bool:
        """Marks the video completed with its files; False if it was cancelled meanwhile."""
        async with self.database.transaction() as session:
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
            await self._finish(
                session, job.job_id, "done", None if completed else "cancelled", utcnow()
            )
            return completed

    async def fail(self, job: ClaimedJob, *, code: str, message: str) -> bool:
        """Fails the video and refunds it in one transaction; False if it was already final."""
        async with self.database.transaction() as session:
            now = await self._hold(session, job)
            video = await session.get(Video, job.video_id, with_for_update=True)
            failed = await self._fail_in(session, job.job_id, video, code, message, now=now)
            return failed

    async def _fail_in(
        self,
        session: AsyncSession,
        job_id: int,
        video: Video | None,
        code: str,
        message: str,
        *,
        now: datetime,
    ) -> bool:
        """Fails, refunds and stops upstream, in the caller's transaction: at most once."""
        if video is None:
            await self._finish(session, job_id, "failed", f"{code}: {message}", now)
            return False
        row = (
            await session.execute(
                update(Video)
                .where(Video.id == video.id, Video.status.in_(ACTIVE_STATUSES))
                .values(
                    status="failed",
                    error_code=code[:64],
                    error_message=message[:500],
                    finished_at=now,
                    updated_at=now,
                )
                .returning(Video.cost)
                .execution_options(synchronize_session=False)
            )
        ).first()
        if row is not None:
            await refund(
                session,
                user_id=video.user_id,
                amount=row.cost,
                video_id=video.id,
                why=f"Generation failed ({code[:64]})",
            )
            await stop_video_upstream(session, video, reason="failed")
        await self._finish(session, job_id, "failed", f"{code}: {message}", now)
        return row is not None

    async def retry_later(
        self, job: ClaimedJob, *, delay_seconds: float, error: str, spend_attempt: bool = True
    ) -> None:
        """Back to the queue after `delay_seconds`; a mere wait gives its claim back."""
        async with self.database.transaction() as session:
            now = await self._hold(session, job)
            await session.execute(
                update(Job)
                .where(Job.id == job.job_id)
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_expires_at=None,
                    run_after=now + timedelta(seconds=delay_seconds),
                    last_error=error[:500],
                    attempts=Job.attempts if spend_attempt else Job.attempts - 1,
                )
                .execution_options(synchronize_session=False)
            )

    async def finish_cancelled(self, job: ClaimedJob) -> None:
        async with self.database.transaction() as session:
            now = await self._hold(session, job)
            await self._finish(session, job.job_id, "done", "cancelled", now)

    async def is_active(self, job: ClaimedJob) -> bool:
        async with self.database.transaction() as session:
            status = (
                await session.execute(select(Video.status).where(Video.id == job.video_id))
            ).scalar_one_or_none()
            return status in ACTIVE_STATUSES

    async def release_all(self) -> None:
        """On a clean stop: our running jobs go back to the queue, to be resumed at once; the
        claim was no fault of the job's, so it gives its attempt back."""
        async with self.database.transaction() as session:
            now = await database_now(session)
            await session.execute(
                update(Job)
                .where(Job.lease_owner == self.worker_id, Job.status == "running")
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_expires_at=None,
                    run_after=now,
                    attempts=Job.attempts - 1,
                )
                .execution_options(synchronize_session=False)
            )

    @staticmethod
    async def _finish(
        session: AsyncSession, job_id: int, status: str, note: str | None, now: datetime
    ) -> None:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=status,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                last_error=note[:500] if note else None,
            )
            .execution_options(synchronize_session=False)
        )

    async def beat(self, *, hostname: str, pid: int) -> None:
        """Records that this worker is alive (what `/api/health` reports as heartbeat age)."""
        async with self.database.transaction() as session:
            seen = await session.execute(
                update(WorkerBeat)
                .where(WorkerBeat.id == self.worker_id)
                .values(last_seen_at=utcnow())
                .returning(WorkerBeat.id)
                .execution_options(synchronize_session=False)
            )
            if seen.first() is None:
                session.add(WorkerBeat(id=self.worker_id, hostname=hostname, pid=pid))

    async def forget_worker(self) -> None:
        async with self.database.transaction() as session:
            await session.execute(delete(WorkerBeat).where(WorkerBeat.id == self.worker_id))
