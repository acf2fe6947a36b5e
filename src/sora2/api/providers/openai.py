"""The `openai` provider: the OpenAI Videos API contract through the official SDK, over a key pool.

Any server speaking the same `/videos` contract works: a catalog provider of `kind = "openai"`
(or `OPENAI_BASE_URL`) points at it. The SDK's own retries are off (`max_retries=0`) because the
worker owns the retry policy; this module only classifies each failure (`ProviderError.kind`) and
moves on to another key when one is refused or rate limited, which is safe because the provider
accepted nothing from that request.

Gateways speak the contract with accents (docs/models.md lists what each was built from), so
answers are read from their JSON, leniently, rather than through the SDK's typed models: `seconds`
may come back as a number or a string, `progress` may be missing, the status may be another word
(LiteLLM says `processing`), an error may have no `code` or be a plain string or FastAPI's
`{"detail": …}`, and the `thumbnail` variant may be missing or answered with the MP4 itself
(then the thumbnail is a frame of the video, taken with PyAV).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
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
from openai import Omit, omit
from openai._types import FileTypes
from openai.types import Video, VideoSeconds, VideoSize
from PIL import Image, UnidentifiedImageError

from sora2.api.providers.base import (
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderJob,
    ProviderStatus,
)
from sora2.api.providers.keys import QUOTA_REST_SECONDS, KeyLease, KeyPool

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
_CLOCK_SLACK_SECONDS = 5.0
# Status words servers use for the contract's four (lower-cased, `-` and spaces read as `_`).
_STATUS_WORDS: dict[str, ProviderStatus] = {
    **dict.fromkeys(
        ("queued", "pending", "submitted", "waiting", "created", "not_started"), "queued"
    ),
    **dict.fromkeys(
        ("in_progress", "processing", "running", "generating", "rendering", "started", "starting"),
        "in_progress",
    ),
    **dict.fromkeys(
        ("completed", "complete", "succeeded", "success", "done", "finished"), "completed"
    ),
    **dict.fromkeys(
        ("failed", "failure", "error", "errored", "cancelled", "canceled", "expired", "rejected"),
        "failed",
    ),
}


class OpenAIProvider:
    def __init__(
        self,
        *,
        api_keys: list[str],
        base_url: str,
        timeout_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "openai",
        keys_variable: str = "OPENAI_API_KEYS",
        max_rest_seconds: float = QUOTA_REST_SECONDS,
    ) -> None:
        self.name = name  # the catalog's name for this provider
        self._pool = KeyPool(
            api_keys, clock=clock, variable=keys_variable, max_rest_seconds=max_rest_seconds
        )
        self._base_url = base_url.rstrip("/")
        self._timeout_seconds = timeout_seconds
        # One connection pool for every key: keys differ only in their Authorization header.
        self._http = openai.DefaultAsyncHttpxClient()
        self._clients: dict[int, openai.AsyncOpenAI] = {}
        self._serves_thumbnails = True

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        return cls(
            api_keys=list(settings.openai_api_keys),
            base_url=settings.openai_base_url,
            timeout_seconds=settings.openai_timeout_ms / 1000,
            max_rest_seconds=settings.job_retry_after_max_seconds,
        )

    async def start(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> str:
        # OpenAI's API answered a repeated `Idempotency-Key` with the job the first request made.
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        # The api checked these against the model's catalog entry; `model` is its upstream name.
        # Multipart carries every field as text, so `seconds` goes as "8" to every server.
        remix = request.remix
        if remix is not None:
            # The contract's remix takes only the new prompt: model, length and size are the
            # source's.
            raw = await self._with_a_key(
                lambda client: client.videos.with_raw_response.remix(
                    remix.job_id, prompt=request.prompt, extra_headers=headers
                )
            )
            return _video_id(raw.text)
        # The image goes as a multipart file part, as the SDK sends one; without it, no part.
        reference: FileTypes | Omit = omit
        if request.input_reference is not None:
            reference = ("reference.jpg", request.input_reference, "image/jpeg")
        raw = await self._with_a_key(
            lambda client: client.videos.with_raw_response.create(
                prompt=request.prompt,
                model=request.model,
                seconds=cast(VideoSeconds, str(request.seconds)),
                size=cast(VideoSize, request.size),
                input_reference=reference,
                extra_headers=headers,
            )
        )
        return _video_id(raw.text)

    async def find_started(self, request: GenerationRequest, *, since: datetime) -> list[str]:
        """Live jobs listed upstream (newest first, so the walk stops at `since`) that ask for
        exactly `request`, oldest first."""
        # Upstream stamps whole seconds on its own clock: allow for both.
        oldest = since.timestamp() - _CLOCK_SLACK_SECONDS
        listed = await self._with_a_key(lambda client: _listed_since(client, oldest))
        matching = [video for video in listed if _made_for(video, request)]
        return [video.id for video in sorted(matching, key=lambda video: video.created_at)]

    async def status(self, job_id: str) -> ProviderJob:
        raw = await self._with_a_key(
            lambda client: client.videos.with_raw_response.retrieve(job_id)
        )
        return job_from_answer(job_id, raw.text)

    async def download(self, job_id: str, video: Path, thumbnail: Path) -> None:
        await self._download_variant(job_id, "video", video)
        if self._serves_thumbnails:
            try:
                await self._download_variant(job_id, "thumbnail", thumbnail)
                return
            except ProviderError as error:
                if error.retryable or error.code == "no_usable_key":
                    raise
                # Servers speaking the contract without the thumbnail variant (or answering it
                # with the video itself): the video has frames, and we stop asking.
                logger.info(
                    "provider %s serves no thumbnail (%s): taking a frame of each video",
                    self.name,
                    error.code,
                )
                self._serves_thumbnails = False
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
                try:
                    await asyncio.to_thread(_ensure_jpeg, partial)
                except (UnidentifiedImageError, OSError) as error:
                    raise ProviderError(
                        ErrorKind.FINAL,
                        "thumbnail_not_an_image",
                        "the thumbnail variant did not answer an image",
                    ) from error
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


def _answer_json(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ProviderError(
            ErrorKind.TRANSIENT,
            "invalid_response",
            "the provider's answer was not a JSON object; ask again later",
        )
    return document


def _video_id(text: str) -> str:
    """The id a create (or remix) answered. Without one the server may still have started a
    paid generation, so this is final, not retried: a retry could pay for it twice."""
    try:
        video_id = _answer_json(text).get("id")
    except ProviderError:
        video_id = None
    if not isinstance(video_id, str) or not video_id:
        raise ProviderError(
            ErrorKind.FINAL,
            "invalid_response",
            "the provider accepted the request but named no video id; not retried, so as not "
            "to pay for it twice",
        )
    return video_id


def job_from_answer(job_id: str, text: str) -> ProviderJob:
    """A `GET /videos/{id}` answer as our `ProviderJob`, read leniently (see the module's doc);
    a failure keeps the provider's code and message."""
    document = _answer_json(text)
    word = str(document.get("status", "")).strip().lower().replace("-", "_").replace(" ", "_")
    status = _STATUS_WORDS.get(word)
    progress = _percent(document.get("progress"))
    if status is None:
        return ProviderJob(
            job_id,
            "failed",
            progress=progress,
            error_code="unexpected_status",
            error_message=f"the provider reported status {word[:40]!r}, unknown to the contract",
        )
    if status == "failed":
        code, message = _failure_of(document.get("error"), word)
        return ProviderJob(job_id, "failed", progress, code, message)
    return ProviderJob(job_id, status, progress=100 if status == "completed" else progress)


def _failure_of(error: object, word: str) -> tuple[str, str]:
    """`error` as servers send it: `{code, message}`, `{message}`, a code as a number, a string."""
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    else:
        code, message = None, error
    code_text = _code_text(code) or ("cancelled" if word in ("cancelled", "canceled") else "")
    return (
        code_text or "generation_failed",
        str(message)[:500] if message else "the provider gave no reason",
    )


def _code_text(code: object) -> str | None:
    """A provider's error code as a word; bare HTTP numbers (vLLM's 500, LiteLLM's "400") say
    nothing more than the status, so they become `http_500`."""
    if code is None or code == "":
        return None
    text = str(code).strip()
    return f"http_{text}" if text.isdigit() else text[:64]


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
    code = _code_text(error.code) or f"http_{status}"
    message = _provider_message(error)
    if status == 404:
        return ProviderError(ErrorKind.NOT_FOUND, code, message)
    if status >= 500 or status in _RETRYABLE_STATUSES:
        retry_after = retry_after_seconds(error.response.headers)
        return ProviderError(ErrorKind.TRANSIENT, code, message, retry_after=retry_after)
    return ProviderError(ErrorKind.FINAL, code, message)


def _provider_message(error: openai.APIStatusError) -> str:
    """The server's words, wherever its dialect puts them: OpenAI's `error.message`, a plain
    `error` string, or FastAPI's `detail` (vLLM-Omni)."""
    body = error.body
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value[:500]
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
