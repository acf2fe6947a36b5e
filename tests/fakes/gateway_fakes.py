"""Fakes of two gateways serving the `/v1/videos` contract with their own accents, on loopback.

Built from the servers' published docs and code (docs/models.md, "What the gateways were built
from"), so the provider meets what it will meet in the field:

- **LiteLLM proxy** (`litellm/types/videos/main.py`, `litellm/llms/gemini/videos/transformation.py`,
  docs.litellm.ai/docs/videos): `Authorization: Bearer` with a proxy key; `model` is a
  `model_name` of its config (`gemini/veo-3.1-generate-preview`); while a video renders its status
  is `processing` with no `progress`; a failure's `error` may carry only a `message`; its own
  errors are `{"error": {"message", "type", "param", "code": "400"}}` (the code is the HTTP
  status as a string); `content` ignores `variant` and always answers the MP4; remix of a Veo
  video is refused ("Video remix is not supported by Google Veo."); ids are opaque `video_…`.
- **vLLM-Omni** (`vllm_omni/entrypoints/openai/protocol/videos.py`, `api_server.py`): multipart
  create with `seconds` a string of digits and `size` `WIDTHxHEIGHT`; the served model is used
  whatever `model` says; ids `video_gen_<hex>`; the contract's four status words and `progress`;
  a failure's `error.code` may be a number; its own errors are FastAPI's `{"detail": "…"}`;
  `content` has no variants (the MP4 always); there is no remix route. Keys are not checked
  (a server started without `--api-key`).

Tests read `calls`/`creates` as they do with `FakeVideosAPI` (OpenAI's own shapes).
"""

from __future__ import annotations

import base64
import itertools
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes.fake_videos_api import (
    BLOCKED_AT_CREATE,
    BLOCKED_WHILE_RENDERING,
    VideosCall,
    tiny_mp4,
)

_DIGITS = re.compile(r"^[1-9][0-9]*$")
_SIZE = re.compile(r"^[0-9]+x[0-9]+$")


@dataclass(frozen=True)
class Dialect:
    name: str
    running_word: str
    reports_progress: bool
    checks_keys: bool
    uses_its_own_model: bool  # vLLM-Omni serves one model, whatever is asked
    remix: Literal["supported", "refused_for_veo", "absent"]
    error_style: Literal["litellm", "fastapi"]
    failure_code: object  # what `error.code` says when a generation fails (None: absent)


LITELLM = Dialect(
    name="litellm",
    running_word="processing",
    reports_progress=False,
    checks_keys=True,
    uses_its_own_model=False,
    remix="refused_for_veo",
    error_style="litellm",
    failure_code=None,
)
VLLM_OMNI = Dialect(
    name="vllm-omni",
    running_word="in_progress",
    reports_progress=True,
    checks_keys=False,
    uses_its_own_model=True,
    remix="absent",
    error_style="fastapi",
    failure_code=500,
)


@dataclass
class GatewayVideo:
    id: str
    prompt: str
    model: str
    seconds: str
    size: str
    created_at: int
    remixed_from: str | None = None
    polls: int = 0
    status: str = "queued"
    progress: int = 0
    error: dict[str, Any] | None = None


@dataclass
class InputReference:
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class GatewayFake:
    dialect: Dialect
    keys: list[str]
    models: list[str]  # the model names the gateway serves (LiteLLM's model_name entries)
    polls_to_complete: int = 3
    calls: list[VideosCall] = field(default_factory=list)
    references: dict[str, InputReference] = field(default_factory=dict)  # by video id
    videos: dict[str, GatewayVideo] = field(default_factory=dict)
    video_bytes: bytes = field(default_factory=tiny_mp4)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def creates(self) -> list[VideosCall]:
        return [c for c in self.calls if c.method == "POST" and c.status == 200]

    def keys_used(self) -> list[str | None]:
        return [call.key for call in self.calls]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gatekeeper], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/videos", self._create)
        app.router.add_get("/v1/videos/{video_id}", self._retrieve)
        app.router.add_get("/v1/videos/{video_id}/content", self._content)
        app.router.add_delete("/v1/videos/{video_id}", self._delete)
        if self.dialect.remix != "absent":
            app.router.add_post("/v1/videos/{video_id}/remix", self._remix)
        return app

    # --- plumbing ---

    @web.middleware
    async def _gatekeeper(self, request: web.Request, handler: Any) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        key = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        call = VideosCall(
            method=request.method,
            path=request.path,
            key=key,
            video_id=request.match_info.get("video_id"),
            variant=request.query.get("variant"),
            content_type=request.content_type,
        )
        self.calls.append(call)
        if self.dialect.checks_keys and key not in self.keys:
            response: web.StreamResponse = self._error(
                401, "Authentication Error, Invalid proxy server token passed.", "auth_error"
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = self._error(404, "Not Found")
        call.status = response.status
        return response

    def _error(
        self, status: int, message: str, kind: str = "invalid_request_error"
    ) -> web.Response:
        if self.dialect.error_style == "fastapi":
            return web.json_response({"detail": message}, status=status)
        body = {"error": {"message": message, "type": kind, "param": "None", "code": str(status)}}
        return web.json_response(body, status=status)

    def _new_id(self) -> str:
        number = next(self._ids)
        if self.dialect.name == "litellm":
            # LiteLLM encodes the provider and the upstream id into an opaque id.
            inner = f"litellm:custom_llm_provider:gemini;video_id:operations/gen-{number}"
            return "video_" + base64.urlsafe_b64encode(inner.encode()).decode().rstrip("=")
        return f"video_gen_{uuid.uuid4().hex}"

    def _as_json(self, video: GatewayVideo) -> dict[str, Any]:
        status = video.status
        if status == "in_progress":
            status = self.dialect.running_word
        body: dict[str, Any] = {
            "id": video.id,
            "object": "video",
            "status": status,
            "created_at": video.created_at,
            "completed_at": video.created_at + 1 if video.status == "completed" else None,
            "model": video.model,
            "seconds": video.seconds,
            "size": video.size,
            "remixed_from_video_id": video.remixed_from,
            "error": video.error,
        }
        if self.dialect.reports_progress:
            body["progress"] = video.progress
        else:
            body["progress"] = None
        return body

    # --- routes ---

    async def _models(self, _request: web.Request) -> web.Response:
        data = [{"id": model, "object": "model", "owned_by": "fake"} for model in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _create(self, request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            form: dict[str, str] = {}
            reference: InputReference | None = None
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    reference = InputReference(
                        value.filename, value.content_type, value.file.read()
                    )
                    form[name] = f"<file {value.filename} {value.content_type}>"
                else:
                    form[name] = str(value)
        elif request.content_type == "application/json" and self.dialect.name == "litellm":
            form = {k: str(v) for k, v in (await request.json()).items()}
            reference = None
        else:
            return self._error(400, "Expected multipart/form-data.")
        self.calls[-1].form = form
        problem = self._invalid(form)
        if problem is not None:
            return self._error(400, problem)
        if BLOCKED_AT_CREATE in form["prompt"]:
            return self._error(400, "The prompt was refused by the provider's content policy.")
        model = self.models[0] if self.dialect.uses_its_own_model else form["model"]
        video = GatewayVideo(
            id=self._new_id(),
            prompt=form["prompt"],
            model=model,
            seconds=form.get("seconds", "4"),
            size=form.get("size", "1280x720"),
            created_at=int(time.time()),
        )
        self.videos[video.id] = video
        if reference is not None:
            self.references[video.id] = reference
        return web.json_response(self._as_json(video))

    def _invalid(self, form: dict[str, str]) -> str | None:
        if not form.get("prompt", "").strip():
            return "prompt is required"
        if "seconds" in form and not _DIGITS.match(form["seconds"]):
            return f"seconds must be a whole number of seconds, not {form['seconds']!r}"
        if "size" in form and not _SIZE.match(form["size"]):
            return f"size must be WIDTHxHEIGHT, not {form['size']!r}"
        if not self.dialect.uses_its_own_model and form.get("model") not in self.models:
            return f"Invalid model name passed in model={form.get('model')}"
        return None

    async def _retrieve(self, request: web.Request) -> web.Response:
        video = self.videos.get(request.match_info["video_id"])
        if video is None:
            return self._error(404, "Video not found")
        self._advance(video)
        return web.json_response(self._as_json(video))

    def _advance(self, video: GatewayVideo) -> None:
        if video.status in ("completed", "failed"):
            return
        video.polls += 1
        if video.polls < self.polls_to_complete:
            video.status = "in_progress"
            video.progress = video.polls * 100 // self.polls_to_complete
        elif BLOCKED_WHILE_RENDERING in video.prompt:
            video.status = "failed"
            video.error = {"message": "The generated video was blocked by the safety filter."}
            if self.dialect.failure_code is not None:
                video.error["code"] = self.dialect.failure_code
        else:
            video.status, video.progress = "completed", 100

    async def _content(self, request: web.Request) -> web.Response:
        video = self.videos.get(request.match_info["video_id"])
        if video is None:
            return self._error(404, "Video not found")
        if video.status != "completed":
            return self._error(404, "Generation is still in-progress")
        # Neither gateway knows variants: a thumbnail request gets the video too.
        return web.Response(body=self.video_bytes, content_type="video/mp4")

    async def _delete(self, request: web.Request) -> web.Response:
        video = self.videos.pop(request.match_info["video_id"], None)
        if video is None:
            return self._error(404, "Video not found")
        return web.json_response({"id": video.id, "object": "video.deleted", "deleted": True})

    async def _remix(self, request: web.Request) -> web.Response:
        source = self.videos.get(request.match_info["video_id"])
        body = await request.json()
        self.calls[-1].form = {k: str(v) for k, v in body.items()}
        if source is None:
            return self._error(404, "Video not found")
        if "veo" in source.model:
            return self._error(
                500, "Video remix is not supported by Google Veo.", "internal_server_error"
            )
        video = GatewayVideo(
            id=self._new_id(),
            prompt=str(body.get("prompt", "")),
            model=source.model,
            seconds=source.seconds,
            size=source.size,
            created_at=int(time.time()),
            remixed_from=source.id,
        )
        self.videos[video.id] = video
        return web.json_response(self._as_json(video))
