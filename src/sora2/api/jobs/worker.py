"""The worker: claims jobs, drives them through the provider, settles them exactly once.

One job goes: store the provider's job id right after `start` (so a crash resumes instead of
paying twice) → poll `status`, saving progress and checking for cancellation between polls →
`download` into storage → mark completed. Transient provider errors go back to the queue with
jittered exponential backoff (or the provider's `retry_after`) until `JOB_MAX_ATTEMPTS`; final
ones fail the video and refund it in the same transaction. While a job runs, its lease is renewed
every third of `WORKER_LEASE_SECONDS`; a worker that loses its lease abandons the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator

from sora2.api.db import Database
from sora2.api.events import VideoEvents
from sora2.api.jobs.queue import ClaimedJob, JobGone, JobQueue, LeaseLost
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
        self.queue = JobQueue(
            database, worker_id=self.worker_id, lease_seconds=settings.worker_lease_seconds
        )
        self._stopping = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()

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
            beat.cancel()
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
            outcome = await self._drive(job)
        except LeaseLost:
            pass
        except ProviderError as error:
            self.metrics.provider_errors.labels(
                self.provider.name, error.kind.value, error.code
            ).inc()
            outcome = await self._settle_error(job, error)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug or a disk problem: retried like a transient error
            logger.exception("job %s failed unexpectedly", job.job_id)
            outcome = await self._settle_error(
                job, ProviderError(ErrorKind.TRANSIENT, "internal_error", type(error).__name__)
            )
        finally:
            self.events.notify(job.video_id)
        self.metrics.job_seconds.labels(outcome).observe(time.monotonic() - started)
        logger.info("job %s (video %s): %s", job.job_id, job.video_id, outcome)

    async def _drive(self, job: ClaimedJob) -> str:
        provider_job_id = job.provider_job_id
        try:
            if provider_job_id is None:
                provider_job_id = await self.provider.start(await self._with_reference(job.request))
                if not await self.queue.record_provider_job(job, provider_job_id):
                    return await self._cancel_upstream(job, provider_job_id)
            elif not await self.queue.is_active(job):
                return await self._cancel_upstream(job, provider_job_id)
            return await self._follow(job, provider_job_id)
        except JobGone:
            # Deleted mid-generation: nobody will ever collect the result, so stop paying for it.
            if provider_job_id is not None:
                await self._cancel_quietly(provider_job_id)
            return "deleted"

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
                return await self._cancel_upstream(job, provider_job_id)
            self.events.notify(job.video_id)
            await asyncio.sleep(poll)  # the provider's pace, not a synchronisation
        if not await self.queue.is_active(job):
            return await self._cancel_upstream(job, provider_job_id)
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

    async def _cancel_upstream(self, job: ClaimedJob, provider_job_id: str) -> str:
        await self._cancel_quietly(provider_job_id)
        await self.queue.finish_cancelled(job)
        return "cancelled"

    async def _cancel_quietly(self, provider_job_id: str) -> None:
        try:
            await self.provider.cancel(provider_job_id)
        except ProviderError as error:
            logger.info("upstream cancel of %s failed: %s", provider_job_id, error.code)

    async def _settle_error(self, job: ClaimedJob, error: ProviderError) -> str:
        try:
            if error.kind is ErrorKind.RATE_LIMITED:
                delay = error.retry_after or self._backoff(job.attempts)
                await self.queue.retry_later(
                    job, delay_seconds=delay, error=error.code, spend_attempt=False
                )
                return "retry"
            if error.kind is ErrorKind.TRANSIENT and job.attempts < self.settings.job_max_attempts:
                delay = (
                    error.retry_after
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


async def run_worker_process(settings: Settings) -> None:
    """`sora2 serve worker`: one worker against the configured database and provider."""
    from sora2.api.context import media_storage
    from sora2.api.db.migrate import prepare_schema
    from sora2.api.providers.factory import create_provider

    database = Database(settings.resolved_database_url)
    try:
        await prepare_schema(database, apply=not settings.is_production)
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
