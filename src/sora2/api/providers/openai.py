"""The `openai` provider: the OpenAI Videos API contract through the official SDK, over a key pool.

Any server speaking the same `/videos` contract works: point `OPENAI_BASE_URL` at it. The SDK's
own retries are off (`max_retries=0`) because the worker owns the retry policy; this module only
classifies each failure (`ProviderError.kind`) and moves on to another key when one is refused
or rate limited, which is safe because the provider accepted nothing from that request.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from openai.types import Video, VideoSeconds, VideoSize
from PIL import Image

from sora2.api.providers.base import (
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderJob,
    ProviderStatus,
)
from sora2.api.providers.keys import KeyLease, KeyPool

if TYPE_CHECKING:
    from sora2.settings import Settings

logger = logging.getLogger(__name__)

# The SDK marks the Videos API deprecated (OpenAI's own service closed); servers speaking the same
# contract remain, and this provider exists for them, so the notice is noise on every call.
warnings.filterwarnings(
    "ignore",
    message="The Sora API is scheduled to permanently shut down",
    category=DeprecationWarning,
)

T = TypeVar("T")
Variant = Literal["video", "thumbnail"]

_CHUNK_BYTES = 256 * 1024
_JPEG_MAGIC = b"\xff\xd8\xff"
_THUMBNAIL_JPEG_QUALITY = 88
# Statuses that say "not now" rather than "never": worth another try later.
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
_PROVIDER_STATUSES: frozenset[str] = frozenset({"queued", "in_progress", "completed", "failed"})
_CLOCK_SLACK_SECONDS = 5.0


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        api_keys: list[str],
        base_url: str,
        timeout_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = KeyPool(api_keys, clock=clock)
        self._base_url = base_url.rstrip("/")
        self._timeout_seconds = timeout_seconds
        # One connection pool for every key: keys differ only in their Authorization header.
        self._http = openai.DefaultAsyncHttpxClient()
        self._clients: dict[int, openai.AsyncOpenAI] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        return cls(
            api_keys=list(settings.openai_api_keys),
            base_url=settings.openai_base_url,
            timeout_seconds=settings.openai_timeout_ms / 1000,
        )

    async def start(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> str:
        # The API layer validated these against the same enumerations the SDK types spell out.
        # OpenAI's API answered a repeated `Idempotency-Key` with the job the first request made.
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        video = await self._with_a_key(
            lambda client: client.videos.create(
                prompt=request.prompt,
                model=request.model,
                seconds=cast(VideoSeconds, str(request.seconds)),
                size=cast(VideoSize, request.size),
                extra_headers=headers,
            )
        )
        return video.id

    async def find_started(self, request: GenerationRequest, *, since: datetime) -> list[str]:
        """Live jobs listed upstream (newest first, so the walk stops at `since`) that ask for
        exactly `request`, oldest first."""
        # Upstream stamps whole seconds on its own clock: allow for both.
        oldest = since.timestamp() - _CLOCK_SLACK_SECONDS
        listed = await self._with_a_key(lambda client: _listed_since(client, oldest))
        matching = [video for video in listed if _made_for(video, request)]
        return [video.id for video in sorted(matching, key=lambda video: video.created_at)]

    async def status(self, job_id: str) -> ProviderJob:
        video = await self._with_a_key(lambda client: client.videos.retrieve(job_id))
        return job_from_video(video)

    async def download(self, job_id: str, video: Path, thumbnail: Path) -> None:
        await self._download_variant(job_id, "video", video)
        try:
            await self._download_variant(job_id, "thumbnail", thumbnail)
        except ProviderError as error:
            if error.retryable or error.code == "no_usable_key":
                raise
            # Servers speaking the contract without the thumbnail variant: the video has frames.
            logger.info(
                "job %s has no thumbnail upstream (%s): taking the first frame", job_id, error.code
            )
            await asyncio.to_thread(_first_frame_as_jpeg, video, thumbnail)

    async def cancel(self, job_id: str) -> None:
        # The contract has no cancel: deleting the job is how a generation is abandoned upstream.
        # Anything short of a confirmation (or 404: already gone) raises, and the outbox retries.
        try:
            await self._with_a_key(lambda client: client.videos.delete(job_id))
        except ProviderError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                raise

    def health(self) -> dict[str, Any]:
        pool = self._pool.health()
        if pool["usable"]:
            state = "ok"
        elif pool["resting"]:
            state = "rate_limited"
        else:
            state = "no_usable_key"
        return {
            "provider": self.name,
            "status": state,
            "baseUrl": _without_credentials(self._base_url),
            "keyPool": pool,
        }

    async def close(self) -> None:
        await self._http.aclose()

    # --- one call, with key rotation ---

    async def _with_a_key(self, call: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
        """Run `call` with the next usable key, moving on when a key is refused or rate limited.

        Each key is tried at most once per call; when none is left the pool says why (all
        resting → TRANSIENT with retry_after, all refused → FINAL).
        """
        for _ in range(len(self._pool)):
            lease = self._pool.acquire()
            try:
                result = await call(self._client_for(lease))
            except openai.RateLimitError as error:
                self._pool.rate_limited(
                    lease,
                    retry_after=retry_after_seconds(error.response.headers),
                    out_of_quota=error.code == "insufficient_quota",
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                self._pool.refused(lease, status=error.status_code, code=error.code)
            except openai.APIError as error:
                raise provider_error(error) from error
            else:
                self._pool.succeeded(lease)
                return result
        raise self._pool.unavailable()

    def _client_for(self, lease: KeyLease) -> openai.AsyncOpenAI:
        client = self._clients.get(lease.index)
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=lease.secret,
                base_url=self._base_url,
                max_retries=0,
                timeout=self._timeout_seconds,
                http_client=self._http,
            )
            self._clients[lease.index] = client
        return client

    # --- downloads ---

    async def _download_variant(self, job_id: str, variant: Variant, destination: Path) -> None:
        """Stream one asset into a temporary file beside `destination`, then rename it into place.

        A reader never sees a half-written file, and a failed transfer leaves nothing behind.
        """
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
        try:
            await self._with_a_key(lambda client: _stream_to(client, job_id, variant, partial))
            if variant == "thumbnail":
                await asyncio.to_thread(_ensure_jpeg, partial)
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)


async def _stream_to(client: openai.AsyncOpenAI, job_id: str, variant: Variant, path: Path) -> None:
    streaming = client.videos.with_streaming_response.download_content(job_id, variant=variant)
    async with streaming as response:
        try:
            with path.open("wb") as file:
                # Chunks are written as they arrive: local disk writes of this size take
                # microseconds, cheaper than a thread hop per chunk.
                async for chunk in response.iter_bytes(_CHUNK_BYTES):
                    file.write(chunk)
        except httpx2.TransportError as error:
            raise ProviderError(
                ErrorKind.TRANSIENT,
                "download_interrupted",
                f"the {variant} transfer broke off ({type(error).__name__}); fetch it again",
            ) from error


async def _listed_since(client: openai.AsyncOpenAI, oldest: float) -> list[Video]:
    listed: list[Video] = []
    async for video in client.videos.list(order="desc", limit=100):
        if video.created_at < oldest:
            break
        listed.append(video)
    return listed


def _made_for(video: Video, request: GenerationRequest) -> bool:
    """Whether a listed job is one a create for `request` would have made (and still live)."""
    if str(video.status) == "failed":
        return False
    if video.prompt is not None and video.prompt != request.prompt:
        return False
    return (
        video.model == request.model
        and str(video.seconds) == str(request.seconds)
        and video.size == request.size
    )


def _ensure_jpeg(path: Path) -> None:
    """The interface promises a JPEG; the Videos API serves its thumbnail as WebP."""
    with path.open("rb") as file:
        if file.read(len(_JPEG_MAGIC)) == _JPEG_MAGIC:
            return
    with Image.open(path) as image:
        converted = image.convert("RGB")
    converted.save(path, "JPEG", quality=_THUMBNAIL_JPEG_QUALITY)


def _first_frame_as_jpeg(video: Path, thumbnail: Path) -> None:
    import av  # only needed on this fallback path; PyAV is heavy to import

    partial = thumbnail.with_name(f".{thumbnail.name}.{uuid.uuid4().hex}.part")
    try:
        with av.open(str(video)) as container:
            frame = next(container.decode(video=0))
            image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]  # PyAV's stubs
            image.save(partial, "JPEG", quality=_THUMBNAIL_JPEG_QUALITY)
        os.replace(partial, thumbnail)
    finally:
        partial.unlink(missing_ok=True)


def job_from_video(video: Video) -> ProviderJob:
    """The SDK's `Video` as our `ProviderJob`; a failure keeps the provider's code and message."""
    status = str(video.status)
    if status not in _PROVIDER_STATUSES:
        return ProviderJob(
            video.id,
            "failed",
            error_code="unexpected_status",
            error_message=f"the provider reported status {status!r}, unknown to the contract",
        )
    if status == "failed":
        return ProviderJob(
            video.id,
            "failed",
            progress=_percent(video.progress),
            error_code=video.error.code if video.error else "generation_failed",
            error_message=video.error.message if video.error else "the provider gave no reason",
        )
    progress = 100 if status == "completed" else _percent(video.progress)
    return ProviderJob(video.id, cast(ProviderStatus, status), progress=progress)


def _percent(value: object) -> int:
    try:
        return max(0, min(100, int(cast(Any, value))))
    except (TypeError, ValueError):
        return 0


def provider_error(error: openai.APIError) -> ProviderError:
    """One SDK failure as a `ProviderError` of the right kind (auth and 429 are the pool's)."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderError(ErrorKind.TRANSIENT, "timeout", "the provider did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return ProviderError(
            ErrorKind.TRANSIENT,
            "connection_error",
            f"could not reach the provider ({error.message})",
        )
    if not isinstance(error, openai.APIStatusError):
        return ProviderError(
            ErrorKind.TRANSIENT,
            "invalid_response",
            "the provider's answer did not follow the contract",
        )
    status = error.status_code
    code = error.code or f"http_{status}"
    message = _provider_message(error)
    if status == 404:
        return ProviderError(ErrorKind.NOT_FOUND, code, message)
    if status >= 500 or status in _RETRYABLE_STATUSES:
        retry_after = retry_after_seconds(error.response.headers)
        return ProviderError(ErrorKind.TRANSIENT, code, message, retry_after=retry_after)
    return ProviderError(ErrorKind.FINAL, code, message)


def _provider_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])
    return f"the provider answered HTTP {error.status_code}"


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's) or `Retry-After` (seconds or a date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
