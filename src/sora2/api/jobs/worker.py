"""The worker: claims jobs, drives them through the provider, settles them exactly once.

One job goes: start it upstream exactly once (below) → poll `status`, saving progress and checking
for cancellation between polls → `download` into storage → mark completed. Transient provider
errors go back to the queue with jittered exponential backoff (or the provider's `retry_after`,
capped by `JOB_RETRY_AFTER_MAX_SECONDS`) until `JOB_MAX_ATTEMPTS`; final ones fail the video and
refund it in the same transaction. While a job runs, its lease is renewed every third of
`WORKER_LEASE_SECONDS`; a worker that loses its lease abandons the job. A video still unfinished at
its deadline (`JOB_DEADLINE_SECONDS` after creation) fails and is refunded.

Starting is the one step that spends money, so it is guarded: the job's key and "a create was
sent" are committed before the create (`prepare_start`), the create carries the key as its
`Idempotency-Key`, and start-and-record runs shielded from cancellation (a lost lease, a stop, the
deadline) so a job made upstream is always recorded, lease or not. When an earlier create went
unanswered, the worker first looks for the job it may have made (`find_started`) and adopts it.
Upstream jobs nobody will collect go to the outbox (`jobs/stops.py`), which every worker drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from sora2.api.db import Database
from sora2.api.errors import is_database_outage
from sora2.api.events import VideoEvents
from sora2.api.jobs.queue import ClaimedJob, JobGone, JobQueue, LeaseLost, Recorded
from sora2.api.jobs.stops import UpstreamStops
from sora2.api.metrics import ApiMetrics
from sora2.api.providers.base import ErrorKind, GenerationRequest, ProviderError, VideoProvider
from sora2.api.storage import Storage
from sora2.api.videos.images import read_reference
from sora2.logs import request_id_var
from sora2.settings import Settings

logger = logging.getLogger("sora2.api.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        storage: Storage,
        provider: VideoProvider,
        metrics: ApiMetrics | None = None,
        events: VideoEvents | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.storage = storage
        self.metrics = metrics or ApiMetrics()
        self.events = events or VideoEvents()
        self.worker_id = worker_id or new_worker_id()
        # A create left unanswered has landed upstream (or never will) after about this long.
        search_delay = 2 * settings.openai_timeout_ms / 1000
        self.queue = JobQueue(
            database,
            worker_id=self.worker_id,
            lease_seconds=settings.worker_lease_seconds,
            max_attempts=settings.job_max_attempts,
            deadline_seconds=settings.job_deadline_seconds,
        )
        self.stops = UpstreamStops(
            database,
            provider,
            claim_seconds=settings.worker_lease_seconds,
            search_delay_seconds=search_delay,
            retry_base_seconds=settings.job_retry_base_ms / 1000,
            retry_max_seconds=settings.job_retry_max_ms / 1000,
        )
        self._stopping = asyncio.Event()
        self._stops_due = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()
        self._starts: set[asyncio.Task[Recorded]] = set()

    # --- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Worker]:
        """Runs the worker in the background for the block's duration, then stops it cleanly."""
        task = asyncio.create_task(self.run(), name=f"worker {self.worker_id}")
        try:
            yield self
        finally:
            await self.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        logger.info("worker %s started (provider %s)", self.worker_id, self.provider.name)
        beat = asyncio.create_task(self._beat_forever())
        drain = asyncio.create_task(self._drain_forever())
        slots = asyncio.Semaphore(self.settings.worker_concurrency)
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                job = await self._claim_safely()
                if job is None:
                    slots.release()
                    await self._pause(self.settings.worker_idle_poll_ms / 1000)
                    continue
                task = asyncio.create_task(self._process(job))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
                task.add_done_callback(lambda _task: slots.release())
        finally:
            # Awaited, not only cancelled: a heartbeat or drain left mid-transaction would keep
            # SQLite's write lock (and a PostgreSQL connection) after the worker says it stopped.
            beat.cancel()
            drain.cancel()
            await asyncio.gather(beat, drain, return_exceptions=True)
            await self._stop_jobs()
            with contextlib.suppress(Exception):
                await self.queue.forget_worker()
            logger.info("worker %s stopped", self.worker_id)

    async def stop(self) -> None:
        self._stopping.set()

    def stop_soon(self) -> None:
        """For signal handlers: finish the current claim loop turn, then stop cleanly."""
        self._stopping.set()

    async def _stop_jobs(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._starts:
            # Creates in flight finish and are recorded: the next worker resumes them.
            await asyncio.gather(*self._starts, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.queue.release_all()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _claim_safely(self) -> ClaimedJob | None:
        try:
            return await self.queue.claim()
        except Exception as error:  # a database hiccup must not end the worker; try again later
            logger.warning("claiming a job failed: %s", type(error).__name__)
            return None

    async def _drain_forever(self) -> None:
        """Stops the upstream jobs in the outbox, now and then and whenever one was added."""
        while True:
            self._stops_due.clear()
            try:
                await self.stops.drain()
            except Exception as error:  # the database or provider away: the rows wait
                logger.warning("draining upstream stops failed: %s", type(error).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.worker_idle_poll_ms / 1000):
                    await self._stops_due.wait()

    async def _beat_forever(self) -> None:
        hostname, pid = socket.gethostname(), os.getpid()
        while True:
            try:
                await self.queue.beat(hostname=hostname, pid=pid)
            except Exception as error:
                logger.warning("worker heartbeat failed: %s", type(error).__name__)
            await asyncio.sleep(self.settings.worker_lease_seconds / 3)

    # --- one job ---------------------------------------------------------------------------

    async def _process(self, job: ClaimedJob) -> None:
        """Drives `job` while renewing its lease; abandons it if the lease is lost."""
        drive = asyncio.create_task(self._drive_and_settle(job))
        renew_every = self.settings.worker_lease_seconds / 3
        try:
            while not drive.done():
                done, _ = await asyncio.wait({drive}, timeout=renew_every)
                if done:
                    break
                if not await self._renew(job):
                    logger.warning("lease lost on job %s; another worker has it", job.job_id)
                    drive.cancel()
                    break
            with contextlib.suppress(asyncio.CancelledError):
                await drive
        except asyncio.CancelledError:
            drive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drive
            raise

    async def _renew(self, job: ClaimedJob) -> bool:
        try:
            return await self.queue.renew_lease(job)
        except Exception as error:  # keep going: the lease is long enough to ride out a blip
            logger.warning("lease renewal failed: %s", type(error).__name__)
            return True

    async def _drive_and_settle(self, job: ClaimedJob) -> None:
        # The job's log lines carry its video id where a request's carry the request id.
        request_id_var.set(f"video-{job.video_id}")
        started = time.monotonic()
        outcome = "lease_lost"
        try:
            outcome = await self._drive_until_deadline(job)
        except LeaseLost:
            pass
        except ProviderError as error:
            self.metrics.provider_errors.labels(
                self.provider.name, error.kind.value, error.code
            ).inc()
            outcome = await self._settle_error(job, error)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a disk problem: retried like a transient error
            logger.exception("job %s failed unexpectedly", job.job_id)
            # The user sees a plain sentence and the reference to quote; the detail is logged.
            message = (
                "Something went wrong on our side while making this video "
                f"(reference video-{job.video_id})."
            )
            outcome = await self._settle_error(
                job, ProviderError(ErrorKind.TRANSIENT, "internal_error", message)
            )
        finally:
            self._stops_due.set()
            self.events.notify(job.video_id)
        self.metrics.job_seconds.labels(outcome).observe(time.monotonic() - started)
        logger.info("job %s (video %s): %s", job.job_id, job.video_id, outcome)

    async def _drive_until_deadline(self, job: ClaimedJob) -> str:
        deadline = asyncio.timeout(job.seconds_left if math.isfinite(job.seconds_left) else None)
        try:
            async with deadline:
                return await self._drive(job)
        except TimeoutError:
            if not deadline.expired():
                raise  # a timeout from below, not the video's deadline
            await self.queue.fail(
                job,
                code="deadline_exceeded",
                message="This video was not ready in time; your credits were refunded.",
            )
            return "failed"

    async def _drive(self, job: ClaimedJob) -> str:
        provider_job_id = job.provider_job_id
        try:
            if provider_job_id is None:
                recorded = await self._start_shielded(job)
                if recorded.follow is None:
                    return await self._without_upstream(job, recorded)
                provider_job_id = recorded.follow
            elif not await self.queue.is_active(job):
                await self.queue.finish_cancelled(job)
                return "cancelled"
            return await self._follow(job, provider_job_id)
        except JobGone:
            return "deleted"  # its upstream job went to the outbox with the delete

    async def _start_shielded(self, job: ClaimedJob) -> Recorded:
        """Start-and-record, run to the end even when this job is cancelled meanwhile."""
        task = asyncio.create_task(self._start_and_record(job))
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)
        task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(task)

    async def _start_and_record(self, job: ClaimedJob) -> Recorded:
        ticket = await self.queue.prepare_start(job)
        if ticket.unsure_since is not None:
            # An earlier create went unanswered: the job it may have made is ours to adopt.
            found = await self.provider.find_started(job.request, since=ticket.unsure_since)
            adoptable = await self.queue.unheld(found)
            if adoptable:
                logger.info("job %s adopts upstream job %s", job.job_id, adoptable[0])
                return await self.queue.record_provider_job(
                    job, adoptable[0], unsure_since=ticket.unsure_since
                )
        try:
            provider_job_id = await self.provider.start(
                await self._with_reference(job.request), idempotency_key=ticket.key
            )
        except ProviderError as error:
            if error.kind in (ErrorKind.FINAL, ErrorKind.RATE_LIMITED):
                await self.queue.start_refused(job, ticket)  # answered: nothing was made
            raise
        return await self.queue.record_provider_job(
            job, provider_job_id, unsure_since=ticket.unsure_since
        )

    async def _without_upstream(self, job: ClaimedJob, recorded: Recorded) -> str:
        self._stops_due.set()
        if recorded.outcome == "gone":
            return "deleted"
        if recorded.outcome == "taken":
            raise ProviderError(
                ErrorKind.TRANSIENT,
                "start_taken",
                "the job this create made was adopted by another video; starting again",
            )
        await self.queue.finish_cancelled(job)
        return "cancelled"

    async def _with_reference(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its starting image read from storage, when it has one."""
        if request.input_reference_key is None:
            return request
        try:
            data = await read_reference(self.storage, request.input_reference_key)
        except FileNotFoundError:
            raise ProviderError(
                ErrorKind.FINAL,
                "input_reference_missing",
                "The image this video starts from is missing from storage.",
            ) from None
        return dataclasses.replace(request, input_reference=data)

    async def _follow(self, job: ClaimedJob, provider_job_id: str) -> str:
        poll = self.settings.worker_provider_poll_ms / 1000
        while True:
            state = await self.provider.status(provider_job_id)
            if state.status == "completed":
                break
            if state.status == "failed":
                raise ProviderError(
                    ErrorKind.FINAL,
                    state.error_code or "generation_failed",
                    state.error_message or "The provider could not generate this video.",
                )
            if not await self.queue.record_progress(job, state.progress):
                return await self._finish_cancelled(job)
            self.events.notify(job.video_id)
            await asyncio.sleep(poll)  # the provider's pace, not a synchronisation
        if not await self.queue.is_active(job):
            return await self._finish_cancelled(job)
        return await self._download_and_complete(job, provider_job_id)

    async def _download_and_complete(self, job: ClaimedJob, provider_job_id: str) -> str:
        video_tmp = self.storage.temp_path(job.video_key)
        thumb_tmp = self.storage.temp_path(job.thumbnail_key)
        try:
            await self.provider.download(provider_job_id, video_tmp, thumb_tmp)
            size = await self.storage.commit(video_tmp, job.video_key)
            await self.storage.commit(thumb_tmp, job.thumbnail_key)
        finally:
            self.storage.discard(video_tmp)
            self.storage.discard(thumb_tmp)
        try:
            completed = await self.queue.complete(job, video_bytes=size)
        except JobGone:
            await self._remove_files(job)
            raise
        if completed:
            return "completed"
        # Cancelled while downloading: the refund is done; the files must not outlive the video.
        await self._remove_files(job)
        return "cancelled"

    async def _remove_files(self, job: ClaimedJob) -> None:
        await self.storage.delete(job.video_key)
        await self.storage.delete(job.thumbnail_key)

    async def _finish_cancelled(self, job: ClaimedJob) -> str:
        """Cancelled meanwhile: the cancel put the upstream job in the outbox; drain it now."""
        self._stops_due.set()
        await self.queue.finish_cancelled(job)
        return "cancelled"

    async def _settle_error(self, job: ClaimedJob, error: ProviderError) -> str:
        try:
            cap = self.settings.job_retry_after_max_seconds
            if error.kind is ErrorKind.RATE_LIMITED:
                delay = min(error.retry_after or self._backoff(job.attempts), cap)
                await self.queue.retry_later(
                    job, delay_seconds=delay, error=error.code, spend_attempt=False
                )
                return "retry"
            if error.kind is ErrorKind.TRANSIENT and job.attempts < self.settings.job_max_attempts:
                delay = (
                    min(error.retry_after, cap)
                    if error.retry_after is not None
                    else self._backoff(job.attempts)
                )
                await self.queue.retry_later(
                    job,
                    delay_seconds=delay,
                    error=f"{error.code}: {error.message}",
                )
                return "retry"
            code = "provider_lost_job" if error.kind is ErrorKind.NOT_FOUND else error.code
            await self.queue.fail(job, code=code, message=error.message)
            return "failed"
        except LeaseLost:
            return "lease_lost"

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniformly in [base/2, base * 2^(n-1)], capped."""
        base = self.settings.job_retry_base_ms / 1000
        ceiling = min(self.settings.job_retry_max_ms / 1000, base * 2 ** (attempt - 1))
        return random.uniform(min(base / 2, ceiling), ceiling)


def _retrieve_exception(task: asyncio.Task[Recorded]) -> None:
    """A shielded start whose waiter was cancelled: its error was handled by the next attempt."""
    if not task.cancelled():
        task.exception()


async def until_database_answers(
    step: Callable[[], Awaitable[None]], *, first_wait: float = 0.25, longest_wait: float = 5.0
) -> None:
    """Run `step`, again and again while the database is unreachable. A worker started (or
    restarted by its supervisor) during a database outage waits for it to end instead of
    exiting: nobody may be there to start it again, and its jobs would wait for ever."""
    wait = first_wait
    while True:
        try:
            await step()
            return
        except Exception as error:
            if not is_database_outage(error):
                raise
            logger.warning(
                "the database is unreachable (%s); trying again in %.2g s",
                type(error).__name__,
                wait,
            )
        await asyncio.sleep(wait)
        wait = min(wait * 2, longest_wait)


async def run_worker_process(settings: Settings) -> None:
    """`sora2 serve worker`: one worker against the configured database and provider."""
    from sora2.api.context import media_storage
    from sora2.api.db.migrate import prepare_schema
    from sora2.api.providers.factory import create_provider

    database = Database(settings.resolved_database_url)
    try:
        await until_database_answers(
            lambda: prepare_schema(database, apply=not settings.is_production)
        )
        provider = create_provider(settings)
        try:
            worker = Worker(
                settings=settings,
                database=database,
                storage=media_storage(settings),
                provider=provider,
            )
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, worker.stop_soon)
            await worker.run()
        finally:
            await provider.close()
    finally:
        await database.dispose()
