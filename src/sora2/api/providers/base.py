"""The one interface every video provider speaks, shaped after the OpenAI Videos API lifecycle.

A job is started once (`start` returns the provider's job id, which the worker stores before doing
anything else), then observed (`status`) until it is final, then its files are copied to our storage
(`download`). A worker that crashes resumes from the stored id.

A create whose answer never arrived (a timeout, a reset, a crash) may still have made a paid job.
So every create carries the video's own `idempotency_key` (the same for every attempt: a provider
that honours it answers with the job it already made), and before trying again the worker asks
`find_started` for jobs that match the request and were made since the first unanswered create:
it adopts one and stops the others (`cancel`). See docs/providers.md, "Paying once".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

ProviderStatus = Literal["queued", "in_progress", "completed", "failed"]


@dataclass(frozen=True, slots=True)
class RemixSource:
    """The completed video a remix starts from: its provider job id (as the worker stored it)
    and its prompt (the local renderer keeps the source's palette, which comes from it)."""

    job_id: str
    prompt: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    model: str
    seconds: int
    size: str  # "WIDTHxHEIGHT"
    # Image-to-video: where the fitted JPEG is in our storage, and its bytes once the worker has
    # read them for `start` (the request is built from the database row, which holds only the key).
    input_reference_key: str | None = None
    input_reference: bytes | None = field(default=None, repr=False)
    remix: RemixSource | None = None

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


@dataclass(frozen=True, slots=True)
class ProviderJob:
    id: str
    status: ProviderStatus
    progress: int = 0
    error_code: str | None = None
    error_message: str | None = None


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # network, 5xx, 429: try again later, with backoff
    # Every key is rate limited: wait `retry_after` and try again, however long it takes; a wait
    # is not a failed attempt, so a long rate limit never fails a video.
    RATE_LIMITED = "rate_limited"
    FINAL = "final"  # auth, content policy, invalid request: fail the video and refund
    NOT_FOUND = "not_found"  # the provider does not know the job id


class ProviderError(Exception):
    def __init__(
        self,
        kind: ErrorKind,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.kind = kind
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED)


class VideoProvider(Protocol):
    name: str

    async def start(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> str:
        """Begin a generation; returns the provider's job id. The same key, the same job (where
        the provider honours keys; the worker always gives one)."""
        ...

    async def find_started(self, request: GenerationRequest, *, since: datetime) -> list[str]:
        """Ids of live jobs upstream made for `request` at or after `since`, oldest first: the
        jobs an unanswered create may have made. Empty when the provider cannot tell."""
        ...

    async def status(self, job_id: str) -> ProviderJob:
        """Where the job is now (one poll; the worker decides how often to ask)."""
        ...

    async def download(self, job_id: str, video: Path, thumbnail: Path) -> None:
        """Copy a completed job's MP4 and JPEG thumbnail to these paths."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Stop (delete) a job upstream. Returns once the provider confirmed it, or does not know
        the id (already gone); raises `ProviderError` when that is not known yet."""
        ...

    def health(self) -> dict[str, Any]:
        """Provider state for `/api/health` (e.g. the key pool), with no secret in it."""
        ...

    async def close(self) -> None: ...
