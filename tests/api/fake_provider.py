"""A scripted stand-in for an external video service, with controllable timing and failures.

It speaks the `VideoProvider` interface the way a remote service would: `start` returns an id,
`status` advances one step per poll, `download` writes the files. Tests script failures
(errors queued for `start` or `status`), hold jobs in progress until released, and count calls.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sora2.api.providers.base import GenerationRequest, ProviderError, ProviderJob

FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
FAKE_JPEG = b"\xff\xd8\xff\xe0" + b"thumb" * 100 + b"\xff\xd9"


@dataclass
class _Job:
    request: GenerationRequest
    polls: int = 0
    cancelled: bool = False


@dataclass
class ScriptedProvider:
    name: str = "scripted"
    polls_to_complete: int = 3
    start_errors: list[ProviderError] = field(default_factory=list)
    status_errors: list[ProviderError] = field(default_factory=list)
    hold: asyncio.Event | None = None  # while set to an unset Event, jobs stay in progress
    fail_with: tuple[str, str] | None = None  # (code, message): jobs end `failed` upstream
    starts: Counter[str] = field(default_factory=Counter)  # by prompt
    cancelled: list[str] = field(default_factory=list)
    jobs: dict[str, _Job] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    async def start(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> str:
        self.starts[request.prompt] += 1
        if self.start_errors:
            raise self.start_errors.pop(0)
        if idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        job_id = f"job_{next(self._ids)}"
        self.jobs[job_id] = _Job(request)
        if idempotency_key is not None:
            self.by_key[idempotency_key] = job_id
        return job_id

    async def find_started(self, request: GenerationRequest, *, since: datetime) -> list[str]:
        return []  # keys are honoured: starting again finds the job

    async def status(self, job_id: str) -> ProviderJob:
        if self.status_errors:
            raise self.status_errors.pop(0)
        job = self.jobs[job_id]
        if self.fail_with is not None:
            return ProviderJob(job_id, "failed", 0, *self.fail_with)
        if self.hold is not None and not self.hold.is_set():
            return ProviderJob(job_id, "in_progress", 10)
        job.polls += 1
        if job.polls >= self.polls_to_complete:
            return ProviderJob(job_id, "completed", 100)
        return ProviderJob(job_id, "in_progress", int(100 * job.polls / self.polls_to_complete))

    async def download(self, job_id: str, video: Path, thumbnail: Path) -> None:
        video.write_bytes(FAKE_MP4)
        thumbnail.write_bytes(FAKE_JPEG)

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def close(self) -> None:
        return None
