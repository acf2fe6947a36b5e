"""The outbox of upstream generations to stop, and the worker's side of draining it.

Whoever makes a video final without its upstream job (a cancel, a delete, a failure, a duplicate
create, a create nobody will collect) adds a row here in the same transaction. Workers drain the
rows: `cancel` (a DELETE upstream) until the provider confirms or says it does
not know the id (404: already gone), with backoff between tries, so a provider that is down when
the user cancels still stops the job once it is back.

A row without an id is a search: a create was sent and never answered, so a job may exist that we
have no id for. It lists what the provider made for that request since the create and stops every
job no live or completed video holds. It runs `SEARCHES` times, `search_delay` after the create
(the worker uses twice `OPENAI_TIMEOUT_MS`) and then at twice and four times that: a backlogged
upstream can land a create later than expected, and one search at a fixed moment misses it. While
another video with the same request has a create in flight, a search waits: the job it finds could
be that video's.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.db import Database
from sora2.api.jobs.models import Job, UpstreamStop
from sora2.api.providers.base import GenerationRequest, ProviderError, RemixSource, VideoProvider
from sora2.api.videos.models import ACTIVE_STATUSES, Video

logger = logging.getLogger("sora2.api.worker")

# Videos whose upstream job must be kept: still being made, or made and delivered.
KEEP_STATUSES = (*ACTIVE_STATUSES, "completed")

# How many times a search row looks for a late create, at 1, 2 and 4 search delays after it.
SEARCHES = 3


async def database_now(session: AsyncSession) -> datetime:
    """The database's clock (leases and deadlines are judged on it, not on each worker's)."""
    if session.get_bind().dialect.name == "sqlite":
        value = (
            await session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
        ).scalar_one()
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    moment = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert isinstance(moment, datetime)
    return moment.astimezone(UTC)


def search_for(request: GenerationRequest, since: datetime) -> dict[str, Any]:
    return {
        "prompt": request.prompt,
        "model": request.model,
        "seconds": request.seconds,
        "size": request.size,
        "since": since.isoformat(),
    }


def request_of(video: Video, remix: RemixSource | None = None) -> GenerationRequest:
    return GenerationRequest(
        prompt=video.prompt,
        model=video.model,
        seconds=video.seconds,
        size=video.size,
        input_reference_key=video.input_reference_key,
        remix=remix,
    )


async def stop_later(
    session: AsyncSession,
    *,
    provider: str,
    reason: str,
    run_after: datetime,
    provider_job_id: str | None = None,
    search: dict[str, Any] | None = None,
) -> None:
    """Adds one row to the outbox, in the caller's transaction."""
    session.add(
        UpstreamStop(
            provider=provider,
            provider_job_id=provider_job_id,
            search=search,
            reason=reason[:64],
            run_after=run_after,
        )
    )
    await session.flush()


async def stop_video_upstream(session: AsyncSession, video: Video, *, reason: str) -> None:
    """The video will never collect its upstream job: stop it, or find and stop it if a create
    for it was sent and never answered. In the caller's transaction."""
    now = await database_now(session)
    if video.provider_job_id:
        await stop_later(
            session,
            provider=video.provider or "",
            reason=reason,
            run_after=now,
            provider_job_id=video.provider_job_id,
        )
        return
    sent_at = (
        await session.execute(select(Job.start_sent_at).where(Job.video_id == video.id))
    ).scalar_one_or_none()
    if sent_at is not None:
        await stop_later(
            session,
            provider=video.provider or "",
            reason=reason,
            run_after=now,
            search=search_for(request_of(video), sent_at),
        )


async def held_ids(session: AsyncSession, ids: list[str]) -> set[str]:
    """Which of `ids` a live or completed video holds (those must never be stopped)."""
    if not ids:
        return set()
    rows = await session.execute(
        select(Video.provider_job_id).where(
            Video.provider_job_id.in_(ids), Video.status.in_(KEEP_STATUSES)
        )
    )
    return {row[0] for row in rows if row[0] is not None}


class UpstreamStops:
    """Drains the outbox (every worker runs one)."""

    def __init__(
        self,
        database: Database,
        provider: VideoProvider,
        *,
        claim_seconds: float,
        search_delay_seconds: float,
        retry_base_seconds: float,
        retry_max_seconds: float,
    ) -> None:
        self.database = database
        self.provider = provider
        self.claim = timedelta(seconds=claim_seconds)
        self.search_delay = timedelta(seconds=search_delay_seconds)
        self.retry_base = retry_base_seconds
        self.retry_max = retry_max_seconds

    async def drain(self, *, limit: int = 20) -> int:
        """Works through the due rows (claimed for a while so other workers skip them)."""
        rows, now = await self._claim(limit)
        for row in rows:
            await self._work_on(row, now)
        return len(rows)

    async def _claim(self, limit: int) -> tuple[list[UpstreamStop], datetime]:
        async with self.database.transaction() as session:
            now = await database_now(session)
            query = (
                select(UpstreamStop)
                # Rows name their provider (the video's); a worker runs the one configured
                # provider, so it drains every row. Several providers would route by that name.
                .where(UpstreamStop.done_at.is_(None), UpstreamStop.run_after <= now)
                .order_by(UpstreamStop.run_after, UpstreamStop.id)
                .limit(limit)
            )
            if session.get_bind().dialect.name != "sqlite":
                query = query.with_for_update(skip_locked=True)
            rows = list((await session.execute(query)).scalars())
            for row in rows:
                row.run_after = now + self.claim
            return rows, now

    async def _work_on(self, row: UpstreamStop, now: datetime) -> None:
        if row.search is not None:
            due = self._next_search_at(row.search)
            if due > now:
                # A late create may still land: search once it should have.
                await self._postpone(row, "waiting for a late create to land", until=due)
                return
        try:
            if row.provider_job_id is not None:
                await self.provider.cancel(row.provider_job_id)
                logger.info("upstream job %s stopped (%s)", row.provider_job_id, row.reason)
            elif row.search is not None:
                if not await self._search_and_stop(row.search):
                    await self._postpone(row, "another create for the same request is in flight")
                    return
                if row.search.get("searched", 0) + 1 < SEARCHES:  # more to come
                    await self._search_again_later(row)
                    return
        except ProviderError as error:
            await self._postpone(row, f"{error.code}: {error.message}")
            return
        await self._finish(row)

    def _next_search_at(self, search: dict[str, Any]) -> datetime:
        """1, 2, then 4 search delays after the create."""
        since = datetime.fromisoformat(search["since"])
        searched: int = search.get("searched", 0)
        return since + self.search_delay * (1 << searched)

    async def _search_again_later(self, row: UpstreamStop) -> None:
        assert row.search is not None
        searched: int = row.search.get("searched", 0)
        search = row.search | {"searched": searched + 1}
        async with self.database.transaction() as session:
            await session.execute(
                update(UpstreamStop)
                .where(UpstreamStop.id == row.id)
                .values(search=search, run_after=self._next_search_at(search), last_error=None)
                .execution_options(synchronize_session=False)
            )

    async def _search_and_stop(self, search: dict[str, Any]) -> bool:
        """Stops every job made for the search's request that no video holds; False to wait."""
        request = GenerationRequest(
            prompt=search["prompt"],
            model=search["model"],
            seconds=int(search["seconds"]),
            size=search["size"],
        )
        async with self.database.read_session() as session:
            if await self._create_in_flight(session, request):
                return False
        found = await self.provider.find_started(
            request, since=datetime.fromisoformat(search["since"])
        )
        async with self.database.read_session() as session:
            keep = await held_ids(session, found)
        for job_id in found:
            if job_id not in keep:
                await self.provider.cancel(job_id)
                logger.info("upstream job %s stopped (made by an unanswered create)", job_id)
        return True

    @staticmethod
    async def _create_in_flight(session: AsyncSession, request: GenerationRequest) -> bool:
        in_flight = select(Job.id).where(
            Job.video_id == Video.id,
            Job.start_sent_at.is_not(None),
            Video.provider_job_id.is_(None),
            Video.status.in_(ACTIVE_STATUSES),
            and_(
                Video.prompt == request.prompt,
                Video.model == request.model,
                Video.seconds == request.seconds,
                Video.size == request.size,
            ),
        )
        return bool((await session.execute(select(exists(in_flight)))).scalar())

    async def _finish(self, row: UpstreamStop) -> None:
        async with self.database.transaction() as session:
            now = await database_now(session)
            await session.execute(
                update(UpstreamStop)
                .where(UpstreamStop.id == row.id)
                .values(done_at=now, attempts=UpstreamStop.attempts + 1, last_error=None)
                .execution_options(synchronize_session=False)
            )

    async def _postpone(
        self, row: UpstreamStop, why: str, *, until: datetime | None = None
    ) -> None:
        attempts = row.attempts + 1
        ceiling = min(self.retry_max, self.retry_base * 2 ** min(attempts, 30))
        delay = random.uniform(min(self.retry_base / 2, ceiling), ceiling)
        logger.info("stopping upstream (%s) postponed: %s", row.reason, why)
        async with self.database.transaction() as session:
            now = await database_now(session)
            await session.execute(
                update(UpstreamStop)
                .where(UpstreamStop.id == row.id)
                .values(
                    attempts=attempts if until is None else row.attempts,
                    run_after=until or now + timedelta(seconds=delay),
                    last_error=why[:500],
                )
                .execution_options(synchronize_session=False)
            )
