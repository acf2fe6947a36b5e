"""The `local` provider: renders a real MP4 on this machine, durably, in a child process per job.

Every job is a folder `<data_dir>/local-provider/<job_id>/`, and the folder is the whole truth:
`spec.json` (the request), `progress`, `thumbnail.jpg` + `video.mp4` when done, `failed.json` or
`cancelled` when not. Any process that can see the folder can answer `status` and `download`; one
that finds a job unfinished with nobody rendering it (its first renderer crashed) renders it again,
since re-rendering locally is free. Who is rendering is an advisory `flock` on `render.lock`, held
by the render process itself, so the operating system releases it the moment that process dies.

Why a child process rather than a thread: the render is pure CPU (numpy, Pillow, x264); in a child
it cannot hold the api's GIL or starve its event loop, it runs at a lower scheduling priority, it
can be stopped at once by a signal, a crash inside a C library cannot take the api down, and a
render in flight finishes even when the api process that started it is killed.

`python -m sora2.api.providers.local <job folder> [render slots]` is that child.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from sora2.api.providers.base import (
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderJob,
)

if TYPE_CHECKING:
    from sora2.api.providers.render import Scene
    from sora2.settings import Settings

logger = logging.getLogger("sora2.api.providers.local")

JOB_ID_PATTERN = re.compile(r"local-[0-9a-f]{32}")
_START_KEYS = uuid.UUID("5b1f8e2a-3c47-4d0e-9a61-0c2f7d9e4b13")  # namespace of job ids by key
MAX_RENDER_ATTEMPTS = 3  # renders that died without finishing (a shutdown does not count)
MIN_SIDE, MAX_SIDE = 16, 4096
MIN_SECONDS, MAX_SECONDS = 1, 60
STOP_GRACE_SECONDS = 5.0
SLOT_POLL_SECONDS = 0.05
RENDER_NICENESS = 10  # the api and the worker stay responsive while a clip renders
# Finished job folders are removed this long after their verdict: the worker has copied the files
# long before, and a user deleting a video must get the disk space back eventually.
RETENTION_SECONDS = 24 * 3600
SWEEP_EVERY_SECONDS = 600.0

JobState = Literal["pending", "completed", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class JobSpec:
    prompt: str
    model: str
    seconds: int
    width: int
    height: int
    created_at: float
    image: bool = False  # opens on the folder's reference.jpg (image-to-video)
    palette_prompt: str | None = None  # a remix keeps its source's colours, drawn from its prompt

    def scene(self, folder: JobFolder) -> Scene:
        from sora2.api.providers.render import Scene

        return Scene(
            prompt=self.prompt,
            width=self.width,
            height=self.height,
            seconds=self.seconds,
            caption=f"{self.model} · rendered locally",
            image=folder.reference if self.image else None,
            palette_prompt=self.palette_prompt,
        )


def write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class JobFolder:
    """The files of one job, and the only code that knows their names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec_file = path / "spec.json"
        self.progress_file = path / "progress"
        self.attempts_file = path / "attempts"
        self.failure_file = path / "failed.json"
        self.cancel_file = path / "cancelled"
        self.lock_file = path / "render.lock"
        self.log_file = path / "render.log"
        self.video = path / "video.mp4"
        self.thumbnail = path / "thumbnail.jpg"
        self.partial_video = path / "video.partial.mp4"
        self.partial_thumbnail = path / "thumbnail.partial.jpg"
        self.reference = path / "reference.jpg"

    def create(self, spec: JobSpec, reference: bytes | None = None) -> None:
        """The image first, then the spec: a folder with a spec is complete."""
        self.path.mkdir(parents=True)
        if reference is not None:
            write_atomically(self.reference, reference)
        write_atomically(self.spec_file, json.dumps(asdict(spec)).encode())

    def exists(self) -> bool:
        return self.spec_file.is_file()

    def read_spec(self) -> JobSpec:
        return JobSpec(**json.loads(self.spec_file.read_text()))

    def finished_at(self) -> float | None:
        """When the job got its verdict (epoch seconds), or None while it is unfinished."""
        verdict = {
            "completed": self.video,
            "cancelled": self.cancel_file,
            "failed": self.failure_file,
        }.get(self.state())
        try:
            return verdict.stat().st_mtime if verdict is not None else None
        except FileNotFoundError:
            return None

    def state(self) -> JobState:
        # The video is renamed into place last, so its presence means the job is complete.
        if self.video.is_file():
            return "completed"
        if self.cancel_file.exists():
            return "cancelled"
        if self.failure_file.is_file():
            return "failed"
        return "pending"

    def failure(self) -> tuple[str, str]:
        payload = json.loads(self.failure_file.read_text())
        return str(payload["code"]), str(payload["message"])

    def fail(self, code: str, message: str) -> None:
        write_atomically(self.failure_file, json.dumps({"code": code, "message": message}).encode())

    def mark_cancelled(self) -> None:
        write_atomically(self.cancel_file, b"")

    def progress(self) -> int:
        try:
            return int(self.progress_file.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def write_progress(self, percent: int) -> None:
        write_atomically(self.progress_file, str(percent).encode())

    def attempts(self) -> int:
        try:
            return int(self.attempts_file.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def write_attempts(self, count: int) -> None:
        write_atomically(self.attempts_file, str(count).encode())

    def renderer_pid(self) -> int | None:
        """The process that last took the render lock (it may have ended since)."""
        try:
            return int(self.lock_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def is_being_rendered(self) -> bool:
        """True while some process, here or elsewhere, holds the render lock."""
        with self.render_lock() as acquired:
            return not acquired

    @contextlib.contextmanager
    def render_lock(self) -> Iterator[bool]:
        """Try to take the render lock without waiting; yields whether it was taken."""
        descriptor = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def remove_partial_files(self) -> None:
        for partial in (self.partial_video, self.partial_thumbnail):
            with contextlib.suppress(OSError):  # best effort: the next render overwrites them
                partial.unlink(missing_ok=True)


class LocalProvider:
    """Renders locally; at most `max_parallel` renders at once from this process, the rest queue."""

    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        max_parallel: int | None = None,
        retention_seconds: float = RETENTION_SECONDS,
    ) -> None:
        self.root = root
        self.retention_seconds = retention_seconds
        self.max_parallel = max_parallel or default_parallelism()
        self._slots = asyncio.Semaphore(self.max_parallel)
        self._renders: dict[str, asyncio.Task[None]] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._closed = False
        self._last_sweep = -math.inf
        self._sweeps: set[asyncio.Task[int]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalProvider:
        return cls(settings.data_dir / "local-provider")

    async def start(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> str:
        reference = request.input_reference
        if request.remix is not None:
            reference = self._reference_of_source(request.remix.job_id)
        spec = spec_from_request(request, image=reference is not None)
        # The id is derived from the key: a second start with the same key finds the first job.
        key = idempotency_key or uuid.uuid4().hex
        job_id = f"local-{uuid.uuid5(_START_KEYS, key).hex}"
        folder = JobFolder(self.root / job_id)
        if folder.path.exists():
            return job_id
        try:
            folder.create(spec, reference)
        except FileExistsError:
            return job_id  # another process started it a moment ago
        except OSError as error:
            raise ProviderError(
                ErrorKind.TRANSIENT,
                "storage_unavailable",
                f"Cannot write the render job under {self.root}: {error.strerror}.",
            ) from None
        self._schedule(job_id)
        self._sweep_now_and_then()
        logger.info(
            "local render %s queued (%dx%d, %d s)", job_id, spec.width, spec.height, spec.seconds
        )
        return job_id

    async def find_started(self, request: GenerationRequest, *, since: datetime) -> list[str]:
        return []  # starts are idempotent by key: starting again is how a job is found

    def _reference_of_source(self, job_id: str) -> bytes | None:
        """A remix opens on its source's image, when the source had one."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise ProviderError(
                ErrorKind.FINAL,
                "remix_source_unavailable",
                "The video to remix was not rendered here; remix another video.",
            )
        try:
            return (self.root / job_id / "reference.jpg").read_bytes()
        except FileNotFoundError:
            return None  # no image, or its render folder was swept: the words and colours stay

    async def status(self, job_id: str) -> ProviderJob:
        folder = self._existing_folder(job_id)
        try:
            return self._status_of(job_id, folder)
        except FileNotFoundError:
            raise _not_found(job_id) from None  # swept away by another process meanwhile

    def _status_of(self, job_id: str, folder: JobFolder) -> ProviderJob:
        state = folder.state()
        if state == "completed":
            return ProviderJob(id=job_id, status="completed", progress=100)
        if state == "cancelled":
            return ProviderJob(
                id=job_id,
                status="failed",
                progress=folder.progress(),
                error_code="cancelled",
                error_message="The render was cancelled.",
            )
        if state == "failed":
            code, message = folder.failure()
            return ProviderJob(
                id=job_id,
                status="failed",
                progress=folder.progress(),
                error_code=code,
                error_message=message,
            )
        rendering = folder.is_being_rendered()
        if not rendering and job_id not in self._renders:
            # Unfinished, and nobody is on it: the process that rendered it died. Start again.
            logger.info("local render %s has no renderer; rendering it again", job_id)
            self._schedule(job_id)
        # The progress file appears once a render has a slot; before that the job waits its turn.
        started = folder.progress_file.exists()
        return ProviderJob(
            id=job_id, status="in_progress" if started else "queued", progress=folder.progress()
        )

    async def download(self, job_id: str, video: Path, thumbnail: Path) -> None:
        folder = self._existing_folder(job_id)
        state = folder.state()
        if state == "pending":
            raise ProviderError(
                ErrorKind.TRANSIENT,
                "not_ready",
                f"Video {job_id} is still rendering; download it once its status is completed.",
            )
        if state != "completed":
            raise ProviderError(
                ErrorKind.FINAL, "not_completed", f"Video {job_id} has no file: it {state}."
            )
        try:
            await asyncio.to_thread(_place_copy, folder.thumbnail, thumbnail)
            await asyncio.to_thread(_place_copy, folder.video, video)
        except FileNotFoundError:
            if folder.exists():
                raise
            raise _not_found(job_id) from None

    async def cancel(self, job_id: str) -> None:
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return
        folder = JobFolder(self.root / job_id)
        if not folder.exists() or folder.state() != "pending":
            return
        # The marker stops a renderer in any process at its next frame; ours we also signal.
        folder.mark_cancelled()
        task = self._renders.get(job_id)
        if task is not None:
            await self._stop_render(job_id)
        logger.info("local render %s cancelled", job_id)

    def health(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "status": "ok",
            "running": len(self._processes),
            "queued": len(self._renders) - len(self._processes),
            "maxParallel": self.max_parallel,
        }

    async def close(self) -> None:
        """Stop this process's renders; their jobs stay resumable by whoever asks next."""
        self._closed = True
        await asyncio.gather(*(self._stop_render(job_id) for job_id in list(self._renders)))
        await asyncio.gather(*self._sweeps)

    def _sweep_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < min(SWEEP_EVERY_SECONDS, self.retention_seconds):
            return
        self._last_sweep = now
        before = time.time() - self.retention_seconds
        sweep = asyncio.create_task(asyncio.to_thread(remove_finished_jobs, self.root, before))
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._sweeps.discard)

    def _existing_folder(self, job_id: str) -> JobFolder:
        folder = JobFolder(self.root / job_id) if JOB_ID_PATTERN.fullmatch(job_id) else None
        if folder is None or not folder.exists():
            raise _not_found(job_id)
        return folder

    def _schedule(self, job_id: str) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._render(job_id), name=f"local-render-{job_id}")
        self._renders[job_id] = task
        task.add_done_callback(lambda done: self._forget(job_id, done))

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._renders.get(job_id) is task:
            del self._renders[job_id]

    async def _render(self, job_id: str) -> None:
        folder = JobFolder(self.root / job_id)
        async with self._slots:
            if folder.state() != "pending":
                return
            try:
                process = await _spawn_renderer(folder, self.max_parallel)
            except OSError as error:
                # Out of processes or file handles: the job stays pending, the next poll retries.
                logger.error("cannot start the local render of %s: %s", job_id, error.strerror)
                return
            self._processes[job_id] = process
            started = time.monotonic()
            try:
                await process.wait()
            finally:
                self._processes.pop(job_id, None)
        if not self._closed:
            self._log_outcome(job_id, folder, process, time.monotonic() - started)

    @staticmethod
    def _log_outcome(
        job_id: str, folder: JobFolder, process: asyncio.subprocess.Process, seconds: float
    ) -> None:
        state, code = folder.state(), process.returncode
        if state == "completed" and folder.renderer_pid() == process.pid:
            logger.info("local render %s completed in %.1f s", job_id, seconds)
        elif state == "failed":
            logger.warning("local render %s failed: %s", job_id, folder.failure()[0])
        elif state == "pending" and code != 0:
            # Died without a verdict (killed, out of memory): the next `status` renders it again.
            logger.warning("local render %s stopped with exit code %s", job_id, code)

    async def _stop_render(self, job_id: str) -> None:
        task = self._renders.get(job_id)
        process = self._processes.get(job_id)
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def default_parallelism() -> int:
    """x264 already uses every core, so one render per two cores keeps the machine responsive."""
    return max(1, (os.cpu_count() or 2) // 2)


async def _spawn_renderer(folder: JobFolder, slots: int) -> asyncio.subprocess.Process:
    with folder.log_file.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(folder.path),
            str(slots),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own session: a Ctrl-C meant for the api reaches the renders only through
            # `close()`, which lets them count the stop as a shutdown, not a crash.
            start_new_session=True,
        )


def remove_finished_jobs(root: Path, finished_before: float) -> int:
    """Delete job folders whose verdict is older than `finished_before`; how many went."""
    removed = 0
    try:
        paths = list(root.iterdir())
    except FileNotFoundError:
        return 0
    for path in paths:
        if not JOB_ID_PATTERN.fullmatch(path.name):
            continue
        try:
            folder = JobFolder(path)
            finished_at = folder.finished_at()
            if finished_at is None or finished_at >= finished_before or folder.is_being_rendered():
                continue
        except OSError:
            continue  # removed by another process's sweep meanwhile
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    if removed:
        logger.info("removed %d finished local render folders", removed)
    return removed


def spec_from_request(request: GenerationRequest, *, image: bool = False) -> JobSpec:
    """Check what the renderer can draw; anything else is a final `invalid_request`."""
    prompt = request.prompt.strip()
    if not prompt:
        raise _invalid("prompt is empty: describe the video in a few words")
    try:
        width, height = request.width, request.height
    except (ValueError, IndexError):
        raise _invalid(f"size {request.size!r} must be WIDTHxHEIGHT, e.g. 1280x720") from None
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 2:
            raise _invalid(
                f"size {request.size!r}: each side must be even and "
                f"between {MIN_SIDE} and {MAX_SIDE} pixels"
            )
    if not MIN_SECONDS <= request.seconds <= MAX_SECONDS:
        raise _invalid(f"seconds must be between {MIN_SECONDS} and {MAX_SECONDS}")
    return JobSpec(
        prompt=prompt,
        model=request.model,
        seconds=request.seconds,
        width=width,
        height=height,
        created_at=time.time(),
        image=image,
        palette_prompt=request.remix.prompt if request.remix is not None else None,
    )


def _not_found(job_id: str) -> ProviderError:
    return ProviderError(
        ErrorKind.NOT_FOUND, "not_found", f"No local render has the id {job_id!r}."
    )


def _invalid(message: str) -> ProviderError:
    return ProviderError(ErrorKind.FINAL, "invalid_request", message)


def _place_copy(source: Path, destination: Path) -> None:
    """Put a copy of `source` at `destination` atomically; a hard link when on the same disk."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


# The render process.


class StopRequest:
    """Why a render should stop: the job was cancelled (any process) or we were told to end."""

    def __init__(self, folder: JobFolder) -> None:
        self.folder = folder
        self.shutting_down = False

    def on_signal(self, _signal: int, _frame: FrameType | None) -> None:
        self.shutting_down = True

    def __call__(self) -> bool:
        return self.shutting_down or self.folder.cancel_file.exists()


class ProgressFile:
    """Writes whole percentages, never lower than a previous attempt reached (no going back)."""

    def __init__(self, folder: JobFolder) -> None:
        self.folder = folder
        self.written = folder.progress()
        folder.write_progress(self.written)  # from now on the job is in progress

    def __call__(self, done: int, total: int) -> None:
        percent = done * 99 // total  # 100 means the files are in place, not just encoded
        if percent > self.written:
            self.folder.write_progress(percent)
            self.written = percent


@contextlib.contextmanager
def render_slot(root: Path, slots: int, stop: Callable[[], bool]) -> Iterator[bool]:
    """Take one of `slots` render slots shared by every process rendering under `root`.

    Each provider limits its own renders, but several worker processes on one machine each have
    one: the slots (a lock file each) keep their renders together to the same limit. Yields
    whether a slot was taken: False when told to stop while waiting for one.
    """
    descriptors = [
        os.open(root / f".render-slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        for index in range(slots)
    ]
    try:
        while not stop():
            for descriptor in descriptors:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield True  # closing the descriptor below releases the slot
                return
            # Polled rather than blocking in flock, so a cancel is noticed while queued.
            time.sleep(SLOT_POLL_SECONDS)
        yield False
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


def render_job(folder: JobFolder, slots: int) -> int:
    """Render one job folder to completion unless someone else already is; the exit code."""
    # Only the render child needs PyAV and numpy: importing them here, not at the top, keeps a
    # third of a second off every start of the api and the worker, which never render themselves.
    from sora2.api.providers.render import RenderStopped, render_clip

    with folder.render_lock() as acquired:
        if not acquired or folder.state() != "pending":
            return 0
        attempt = folder.attempts() + 1
        if attempt > MAX_RENDER_ATTEMPTS:
            folder.fail("render_crashed", f"The render stopped unexpectedly {attempt - 1} times.")
            return 1
        folder.write_attempts(attempt)
        folder.lock_file.write_text(str(os.getpid()))  # who renders, for people and tests
        stop = StopRequest(folder)
        signal.signal(signal.SIGTERM, stop.on_signal)
        signal.signal(signal.SIGINT, stop.on_signal)
        try:
            with render_slot(folder.path.parent, slots, stop) as got_slot:
                if not got_slot:
                    raise RenderStopped
                render_clip(
                    folder.read_spec().scene(folder),
                    folder.partial_video,
                    folder.partial_thumbnail,
                    on_progress=ProgressFile(folder),
                    should_stop=stop,
                )
                os.replace(folder.partial_thumbnail, folder.thumbnail)
                os.replace(folder.partial_video, folder.video)
        except RenderStopped:
            folder.remove_partial_files()
            if stop.shutting_down:
                folder.write_attempts(attempt - 1)  # a shutdown is not the render's fault
            return 0
        except Exception as error:
            folder.remove_partial_files()
            # Users see the kind of error; the traceback, with paths, goes to render.log only.
            folder.fail(
                "render_failed",
                f"The local renderer failed ({type(error).__name__}); try again, and if it "
                "keeps failing an operator will find the reason in the job's render.log.",
            )
            raise
        folder.write_progress(100)
        return 0


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or not all(arg.isdigit() for arg in argv[1:]):
        print(
            "usage: python -m sora2.api.providers.local <job folder> [render slots]",
            file=sys.stderr,
        )
        return 2
    os.nice(RENDER_NICENESS)
    slots = int(argv[1]) if len(argv) == 2 else default_parallelism()
    return render_job(JobFolder(Path(argv[0])), max(1, slots))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
