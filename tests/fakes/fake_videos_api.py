"""A fake of the OpenAI Videos API on loopback, speaking its wire format, with faults on request.

Routes (under `/v1`, like the real base URL): multipart `POST /videos`, `GET /videos` (the list,
newest first, cursor `after`), `GET /videos/{id}` whose status and progress advance one step per
poll, `GET /videos/{id}/content?variant=video|thumbnail`, `DELETE /videos/{id}`. Keys are checked
as the real service does (`Authorization: Bearer …`). A create's `Idempotency-Key` is honoured as
OpenAI's API did (the same key answers with the job the first request made) unless
`honour_idempotency` is off, like servers that ignore the header.
Tests steer it through `FakeVideosAPI` attributes (rate-limited keys, revoked keys, 5xx, stalls,
slow or late creates, truncated downloads) and read `calls` to learn what actually arrived and with
which key; `videos` holds the jobs alive upstream (a DELETE removes one).
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from sora2.catalog import BUILT_IN_MODELS, BUILT_IN_SECONDS, BUILT_IN_SIZES

# A prompt containing this is refused at create, like the real moderation check.
BLOCKED_AT_CREATE = "[blocked-at-create]"
# A prompt containing this is accepted, then fails moderation while it renders.
BLOCKED_WHILE_RENDERING = "[blocked-while-rendering]"

# What OpenAI's own service accepted: the built-in catalog's models, lengths and sizes.
MODELS = frozenset(model_id for model_id, _, _ in BUILT_IN_MODELS)
SECONDS = frozenset(str(seconds) for seconds in BUILT_IN_SECONDS)
SIZES = frozenset(BUILT_IN_SIZES)
THUMBNAIL_SIZE = (96, 54)


@dataclass
class VideosCall:
    """One request as it arrived, and the status it was answered with."""

    method: str
    path: str
    key: str | None
    video_id: str | None = None
    variant: str | None = None
    content_type: str = ""
    form: dict[str, str] = field(default_factory=dict)
    status: int = 0
    idempotency_key: str | None = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Decides, per request, whether it meets a fault: returns the answer to send instead (having
# called the handler itself if the fault comes after the work), or None to answer normally.
Chaos = Callable[[web.Request, VideosCall, Handler], Awaitable[web.StreamResponse | None]]


@dataclass(frozen=True)
class RateLimit:
    """How a rate-limited key is answered: `Retry-After` (seconds) and/or `retry-after-ms`."""

    retry_after: str | None = "20"
    retry_after_ms: str | None = None
    code: str = "rate_limit_exceeded"


@dataclass
class FakeVideo:
    id: str
    prompt: str
    model: str
    seconds: str
    size: str
    created_at: int
    polls: int = 0
    status: str = "queued"
    progress: int = 0
    error: dict[str, str] | None = None
    remixed_from: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "video",
            "created_at": self.created_at,
            "completed_at": self.created_at + 1 if self.status == "completed" else None,
            "expires_at": self.created_at + 3600 if self.status == "completed" else None,
            "status": self.status,
            "model": self.model,
            "progress": self.progress,
            "seconds": self.seconds,
            "size": self.size,
            "prompt": self.prompt,
            "remixed_from_video_id": self.remixed_from,
            "error": self.error,
        }


@functools.cache
def tiny_mp4() -> bytes:
    """A real, decodable H.264 MP4 (a few frames), so downloads can be checked end to end."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        for shade in range(0, 240, 30):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), (shade, 80, 200 - shade)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@functools.cache
def webp_thumbnail() -> bytes:
    """What the real API serves for `variant=thumbnail`: a WebP image."""
    buffer = io.BytesIO()
    Image.new("RGB", THUMBNAIL_SIZE, (200, 40, 90)).save(buffer, "WEBP")
    return buffer.getvalue()


class FakeVideosAPI:
    def __init__(self, *, keys: list[str], polls_to_complete: int = 3) -> None:
        self.valid_keys = set(keys)
        self.polls_to_complete = polls_to_complete
        self.revoked: set[str] = set()
        self.forbidden: set[str] = set()
        self.rate_limited: dict[str, RateLimit] = {}
        self.server_errors_left = 0
        self.server_error_status = 500
        self.server_error_retry_after: str | None = None
        self.stall_seconds = 0.0
        self.truncate_downloads = False
        self.honour_idempotency = True
        # A create makes its job at once, then answers this much later (after a client timeout).
        self.create_answer_delay = 0.0
        # A create makes its job only this much later (serve with handler_cancellation=False so
        # a client that gave up does not stop it), like a backlog upstream.
        self.create_land_delay = 0.0
        self.slow_creates: int | None = None  # how many creates the delays apply to (None: all)
        self.made: list[str] = []  # every job ever made (each a paid generation)
        self.answers_by_key: dict[str, dict[str, Any]] = {}
        self.serve_thumbnails = True
        self.video_bytes = tiny_mp4()
        self.thumbnail_bytes = webp_thumbnail()
        self.calls: list[VideosCall] = []
        self.chaos: Chaos | None = None  # faults chosen per request (the soak's)
        self.videos: dict[str, FakeVideo] = {}
        self._ids = itertools.count(1)

    # --- what tests read ---

    def calls_to(self, method: str) -> list[VideosCall]:
        return [call for call in self.calls if call.method == method]

    @property
    def creates(self) -> list[VideosCall]:
        """Create requests the service accepted (each one a paid generation upstream)."""
        return [call for call in self.calls_to("POST") if call.status == 200]

    def keys_used(self) -> list[str | None]:
        return [call.key for call in self.calls]

    # --- the application ---

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gatekeeper])
        app.router.add_post("/v1/videos", self._create)
        app.router.add_get("/v1/videos", self._list)
        app.router.add_get("/v1/videos/{video_id}", self._retrieve)
        app.router.add_get("/v1/videos/{video_id}/content", self._content)
        app.router.add_delete("/v1/videos/{video_id}", self._delete)
        app.router.add_post("/v1/videos/{video_id}/remix", self._remix)
        return app

    @web.middleware
    async def _gatekeeper(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Faults and authentication, in the order the real service applies them."""
        call = await self._record(request)
        response = await self._answer(request, call, handler)
        call.status = response.status
        return response

    async def _answer(
        self, request: web.Request, call: VideosCall, handler: Any
    ) -> web.StreamResponse:
        if self.chaos is not None and self._refuse_key(call.key) is None:
            faulted = await self.chaos(request, call, handler)
            if faulted is not None:
                return faulted
        if self.stall_seconds:
            await asyncio.sleep(self.stall_seconds)
        if self.server_errors_left > 0:
            self.server_errors_left -= 1
            headers = {}
            if self.server_error_retry_after is not None:
                headers["Retry-After"] = self.server_error_retry_after
            return _error(
                self.server_error_status, "server_error", "The server had an error", headers=headers
            )
        refusal = self._refuse_key(call.key)
        if refusal is not None:
            return refusal
        response: web.StreamResponse = await handler(request)
        return response

    async def _record(self, request: web.Request) -> VideosCall:
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type == "multipart/form-data":
            form = {name: str(value) for name, value in (await request.post()).items()}
        authorization = request.headers.get("Authorization", "")
        call = VideosCall(
            method=request.method,
            path=request.path,
            key=authorization.removeprefix("Bearer ")
            if authorization.startswith("Bearer ")
            else None,
            video_id=request.match_info.get("video_id"),
            variant=request.query.get("variant"),
            content_type=request.content_type,
            form=form,
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        self.calls.append(call)
        return call

    def _refuse_key(self, key: str | None) -> web.Response | None:
        if key is None:
            return _error(401, None, "You didn't provide an API key.")
        if key in self.revoked or key not in self.valid_keys:
            # The real service quotes the key back (partly); quoting it all makes leak tests strict.
            return _error(401, "invalid_api_key", f"Incorrect API key provided: {key}.")
        if key in self.forbidden:
            return _error(403, "unsupported_country_region_territory", "Not available here.")
        limit = self.rate_limited.get(key)
        if limit is not None:
            headers = {}
            if limit.retry_after is not None:
                headers["Retry-After"] = limit.retry_after
            if limit.retry_after_ms is not None:
                headers["retry-after-ms"] = limit.retry_after_ms
            return _error(429, limit.code, "Rate limit reached for requests.", headers=headers)
        return None

    async def _create(self, request: web.Request) -> web.Response:
        if request.content_type != "multipart/form-data":
            return _error(400, "invalid_request", "Expected multipart/form-data.")
        form = self.calls[-1].form
        prompt = form.get("prompt", "")
        problem = _invalid_field(form)
        if problem is not None:
            return _error(400, "invalid_value", problem[1], param=problem[0])
        if BLOCKED_AT_CREATE in prompt:
            return _error(
                400, "moderation_blocked", "Your request was blocked by our moderation system."
            )
        slow = self.slow_creates is None or self.slow_creates > 0
        if self.slow_creates:
            self.slow_creates -= 1
        if slow and self.create_land_delay:
            await asyncio.sleep(self.create_land_delay)
        key = self.calls[-1].idempotency_key if self.honour_idempotency else None
        if key in self.answers_by_key:
            return web.json_response(self.answers_by_key[key])  # the first answer, replayed
        video = FakeVideo(
            id=f"video_{next(self._ids):06d}",
            prompt=prompt,
            model=form.get("model", "sora-2"),
            seconds=form.get("seconds", "4"),
            size=form.get("size", "720x1280"),
            created_at=int(time.time()),
        )
        self.videos[video.id] = video
        self.made.append(video.id)
        if key:
            self.answers_by_key[key] = video.as_json()
        if slow and self.create_answer_delay:
            await asyncio.sleep(self.create_answer_delay)
        return web.json_response(video.as_json())

    async def _list(self, request: web.Request) -> web.Response:
        newest_first = sorted(self.videos.values(), key=lambda video: video.id, reverse=True)
        if request.query.get("order") == "asc":
            newest_first.reverse()
        after = request.query.get("after")
        if after is not None:
            ids = [video.id for video in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest_first[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [video.as_json() for video in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest_first) > limit,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        video = self.videos.get(request.match_info["video_id"])
        if video is None:
            return _not_found(request.match_info["video_id"])
        self._advance(video)
        return web.json_response(video.as_json())

    def _advance(self, video: FakeVideo) -> None:
        if video.status in ("completed", "failed"):
            return
        video.polls += 1
        if video.polls < self.polls_to_complete:
            video.status = "in_progress"
            video.progress = video.polls * 100 // self.polls_to_complete
        elif BLOCKED_WHILE_RENDERING in video.prompt:
            video.status = "failed"
            video.error = {
                "code": "moderation_blocked",
                "message": "The generated video did not pass moderation.",
            }
        else:
            video.status, video.progress = "completed", 100

    async def _content(self, request: web.Request) -> web.StreamResponse:
        video = self.videos.get(request.match_info["video_id"])
        if video is None:
            return _not_found(request.match_info["video_id"])
        if video.status != "completed":
            return _error(400, "video_not_ready", "Video is not ready yet.")
        variant = request.query.get("variant", "video")
        if variant == "video":
            return await self._send(request, self.video_bytes, "video/mp4")
        if variant == "thumbnail" and self.serve_thumbnails:
            return await self._send(request, self.thumbnail_bytes, "image/webp")
        return _error(400, "invalid_value", f"Unsupported variant {variant!r}.", param="variant")

    async def _send(
        self, request: web.Request, body: bytes, content_type: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(body)
        await response.prepare(request)
        if not self.truncate_downloads:
            await response.write(body)
            await response.write_eof()
            return response
        await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()  # the rest never comes: the client sees a short body
        return response

    async def _remix(self, request: web.Request) -> web.Response:
        """`POST /videos/{id}/remix` `{"prompt"}`: a new video of a completed one."""
        source = self.videos.get(request.match_info["video_id"])
        body = await request.json()
        self.calls[-1].form = {key: str(value) for key, value in body.items()}
        if source is None:
            return _not_found(request.match_info["video_id"])
        if source.status != "completed":
            return _error(400, "invalid_request", "Only a completed video can be remixed.")
        video = FakeVideo(
            id=f"video_{next(self._ids):06d}",
            prompt=str(body.get("prompt", "")),
            model=source.model,
            seconds=source.seconds,
            size=source.size,
            created_at=int(time.time()),
            remixed_from=source.id,
        )
        self.videos[video.id] = video
        return web.json_response(video.as_json())

    async def _delete(self, request: web.Request) -> web.Response:
        video = self.videos.pop(request.match_info["video_id"], None)
        if video is None:
            return _not_found(request.match_info["video_id"])
        return web.json_response({"id": video.id, "object": "video.deleted", "deleted": True})


def _invalid_field(form: dict[str, str]) -> tuple[str, str] | None:
    if not form.get("prompt", "").strip():
        return "prompt", "Missing required parameter: 'prompt'."
    for name, allowed in (("model", MODELS), ("seconds", SECONDS), ("size", SIZES)):
        if name in form and form[name] not in allowed:
            return (
                name,
                f"Invalid value for '{name}': {form[name]!r}; expected one of {sorted(allowed)}.",
            )
    return None


def _not_found(video_id: str) -> web.Response:
    return _error(
        404, "video_not_found", f"Video with id '{video_id}' not found.", param="video_id"
    )


def _error(
    status: int,
    code: str | None,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)
