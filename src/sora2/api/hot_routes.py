"""The hot routes' usual answer, without FastAPI's dependency resolution or SQLAlchemy.

Most of the api's traffic is a handful of signed-in requests: a video (which pages poll), the
list, the balance, the ledger, the account, the model list, an event stream's first read, a
file's first bytes, and creates. Through FastAPI and SQLAlchemy each cost 5 to 20 times the CPU
of a lean handler doing the same work (`python -m bench api`): dependency resolution, statement
execution and result processing, a transaction around a single read, response validation.

`HotRoutes` sits in front of FastAPI's router and answers these routes' *successful* case
itself: the token's claims (cached signature check), then one driver statement that reads the
route's rows only if the session is live and the account active (`sora2.api.db.rows`), then
orjson; a create then writes in one transaction (`sora2.api.videos.creates`). Whenever that case
does not hold — no or bad token, a revoked session, a suspended account, someone else's or no
video, a query parameter it does not take as given, a multipart create, an Idempotency-Key
already used — it answers nothing and the request goes on to the FastAPI route, which decides as
it always has. So every refusal, error shape and the OpenAPI document stay FastAPI's; tests hold
the two paths' answers to the same bytes and a create's writes to the same rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sora2.api import live
from sora2.api.auth import reads as account
from sora2.api.catalog.routes import model_list
from sora2.api.context import ApiContext
from sora2.api.credits import reads as ledger
from sora2.api.credits.service import insufficient_credits
from sora2.api.db.rows import Row, Rows, Statement, taken, utc
from sora2.api.deps import ACCESS_COOKIE
from sora2.api.errors import ApiError, error_response
from sora2.api.idempotency.service import fingerprint, is_valid_key
from sora2.api.videos import creates
from sora2.api.videos import reads as videos
from sora2.api.videos import service as video_rules
from sora2.api.videos.routes import (
    PRIVATE_FILE_CACHE,
    completed_file_response,
    video_events_response,
)
from sora2.api.videos.schemas import VideoCreate
from sora2.catalog import PROMPT_MAX_CHARS

Params = dict[str, Any]
# A hot route's answer: JSON to send with 200, another response, or None (FastAPI decides).
Answer = Callable[["HotRoutes", Scope, dict[str, str]], Awaitable[bytes | ASGIApp | None]]

PAGE_MAX = 100_000
LIMIT_MAX = 100
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """What the access log and metrics name the route by (`scope["route"].path`)."""

    path: str


def _json(document: Any) -> bytes:
    # pydantic's rendering of an aware UTC datetime ends in "Z"; orjson's does with this option.
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


def _signed_in(scope: Scope, context: ApiContext) -> Params | None:
    """The ids an access token names (Bearer header, else the session cookie), or None."""
    token = None
    cookies = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                token = credentials.strip()
        elif name == b"cookie":
            cookies = value
    if token is None and cookies is not None:
        token = cookie_parser(cookies.decode("latin-1")).get(ACCESS_COOKIE)
    claims = context.tokens.read(token) if token else None
    if claims is None:
        return None
    return {"user_id": claims.user_id, "session_id": claims.session_id}


def _query(scope: Scope, allowed: frozenset[str]) -> dict[str, str] | None:
    """The query's values for `allowed` names; None when one is repeated (FastAPI decides)."""
    raw: bytes = scope["query_string"]
    if not raw:
        return {}
    values: dict[str, str] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name in allowed:
            if name in values:
                return None
            values[name] = value
    return values


def _whole_number(value: str | None, default: int, highest: int) -> int | None:
    """A page or limit as FastAPI takes it (1…highest); None for anything else."""
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        return None
    number = int(value)
    return number if 1 <= number <= highest else None


def _paging(query: dict[str, str]) -> tuple[int, int] | None:
    page = _whole_number(query.get("page"), 1, PAGE_MAX)
    limit = _whole_number(query.get("limit"), 20, LIMIT_MAX)
    return None if page is None or limit is None else (page, limit)


def _refused(refusal: ApiError) -> ASGIApp:
    """A refusal this layer decided (after counting or reading), in the one error shape."""
    return error_response(
        refusal.status, refusal.error, refusal.message, refusal.details, refusal.headers
    )


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# A create's body is a prompt of at most PROMPT_MAX_CHARS and three short fields.
CREATE_BODY_MAX_BYTES = 4 * PROMPT_MAX_CHARS + 1024


def _create_key(scope: Scope) -> str | None:
    """For a JSON create: its `Idempotency-Key`, or "" without one; None for anything else
    (another body type, or a malformed key, which the route refuses)."""
    content_type = b""
    key = ""
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            key = value.decode("latin-1")
            if not is_valid_key(key):
                return None
        elif name == b"content-type":
            content_type = value
    if content_type.split(b";")[0].strip().lower() != b"application/json":
        return None
    return key


async def _read_small_body(receive: Receive) -> tuple[bytes, bool]:
    """What the client sent, and whether that is its whole body (not when it is longer than a
    create's can be: the route reads the rest, and refuses it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # the client left; the route sees the same
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > CREATE_BODY_MAX_BYTES:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replaying(body: bytes, whole: bool, receive: Receive) -> Receive:
    """`receive` for the route, starting with the bytes this layer already read."""
    pending = [{"type": "http.request", "body": body, "more_body": not whole}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _video_fields(body: bytes) -> VideoCreate | None:
    """The body as the route would validate it, or None for the route to refuse."""
    try:
        return VideoCreate.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


_PAGING = frozenset({"page", "limit"})
_LISTING = frozenset({"page", "limit", "status"})


class HotRoutes:
    """ASGI middleware: the successful case of the hot routes, or on to FastAPI."""

    def __init__(self, app: ASGIApp, context: ApiContext, rows: Rows) -> None:
        self.app = app
        self.context = context
        self.rows = rows
        self.models_body = _json(model_list(context.catalog).model_dump(mode="json"))
        self.prices = context.catalog.prices()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] == "/api/videos":
            await self.create(scope, receive, send)
            return
        if scope["method"] == "GET":
            route = self._route(scope["path"])
            if route is not None:
                template, answer, path_params = route
                found = await answer(self, scope, path_params)
                if isinstance(found, bytes):
                    scope["route"] = template
                    await _send_json(send, 200, found)
                    return
                if found is not None:
                    scope["route"] = template
                    await found(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /api/videos` with a JSON body: checked and validated as the route does, then
        charged and queued in one transaction (with the `Idempotency-Key`'s record, if one was
        sent). Until something is counted or written, anything unusual goes on to the route:
        a key already used (the route replays its answer), multipart, an invalid body."""
        key_header = _create_key(scope)
        if key_header is None:
            await self.app(scope, receive, send)
            return
        body, whole = await _read_small_body(receive)
        params = _signed_in(scope, self.context) if whole else None
        fields = None if params is None else _video_fields(body)
        key = None
        if fields is not None and key_header:
            key = creates.Key(key_header, fingerprint("POST", "/api/videos", fields))
        ready = fields is not None and params is not None and await self._ready(params, key)
        if not ready or fields is None or params is None:
            await self.app(scope, _replaying(body, whole, receive), send)
            return
        scope["route"] = _CREATE
        try:
            created = await self._charge_and_queue(params["user_id"], fields, key)
        except ApiError as refusal:
            await _refused(refusal)(scope, receive, send)
            return
        except Exception as error:
            if not taken(error):
                raise
            # The same key, claimed by a request that committed first: the route replays it.
            await self.app(scope, _replaying(body, whole, receive), send)
            return
        await _send_json(send, 202, _json(creates.created_json(created)))

    async def _ready(self, params: Params, key: creates.Key | None) -> bool:
        """The session is live, the account active and the key (if any) not yet used."""
        if key is None:
            return await self.rows.one(account.CREDITS, params) is not None
        row = await self.rows.one(videos.KEY_HOLDER, params | {"key": key.key})
        return row is not None and row[0] is None

    async def _charge_and_queue(
        self, user_id: str, fields: VideoCreate, key: creates.Key | None
    ) -> creates.Created:
        """The route's checks in its order (limit, choice, balance), then the writes."""
        context = self.context
        await context.limiter.check_and_record(
            f"generate:user:{user_id}",
            context.settings.generate_limit_per_user,
            "videos started in a short time",
        )
        choice = video_rules.choose(
            context.catalog, model=fields.model, seconds=fields.seconds, size=fields.size
        )
        created = await creates.charge_and_queue(
            self.rows, user_id=user_id, prompt=fields.prompt, choice=choice, key=key
        )
        if created is None:
            balance = await self.rows.one(account.BALANCE, {"user_id": user_id})
            raise insufficient_credits(choice.cost, int(balance[0]) if balance else 0)
        return created

    def _route(self, path: str) -> tuple[HotRoute, Answer, dict[str, str]] | None:
        exact = _EXACT.get(path)
        if exact is not None:
            return exact[0], exact[1], {}
        if path.startswith(_VIDEO_PREFIX):
            video_id, _, what = path[len(_VIDEO_PREFIX) :].partition("/")
            per_video = _PER_VIDEO.get(what)
            if video_id and per_video is not None:
                return per_video[0], per_video[1], {"video_id": video_id}
        return None

    async def _own_video(self, scope: Scope, video_id: str) -> tuple[Params, Row] | None:
        """The caller's ids and their video, read with the session check; None otherwise."""
        params = _signed_in(scope, self.context)
        if params is None:
            return None
        params["video_id"] = video_id
        row = await self.rows.one(videos.OWN_VIDEO, params)
        return None if row is None else (params, row)

    async def events(self, scope: Scope, path_params: dict[str, str]) -> ASGIApp | None:
        """`GET /api/videos/{id}/events`: the first read is the session check's statement; the
        stream itself is the route's (`LiveProgress.stream`)."""
        read_at = live.clock()  # before the read: the poller must know how old it is
        found = await self._own_video(scope, path_params["video_id"])
        if found is None:
            return None
        params, row = found
        video = videos.video_columns(row, user_id=params["user_id"])
        last_event_id = Headers(scope=scope).get("last-event-id")
        return video_events_response(
            self.context,
            video,
            read_at=read_at,
            user_id=params["user_id"],
            session_id=params["session_id"],
            last_event_id=last_event_id,
        )

    async def content(self, scope: Scope, path_params: dict[str, str]) -> ASGIApp | None:
        """`GET /api/videos/{id}/content` (no query): the MP4 or a range of it."""
        return await self._file(scope, path_params["video_id"], "video")

    async def thumbnail(self, scope: Scope, path_params: dict[str, str]) -> ASGIApp | None:
        """`GET /api/videos/{id}/thumbnail` (no query)."""
        return await self._file(scope, path_params["video_id"], "thumbnail")

    async def _file(self, scope: Scope, video_id: str, what: str) -> ASGIApp | None:
        """A completed video's file from the store, as the routes serve it (ranges, 409 before
        it completed); a query (`?download=1`) is the route's."""
        found = None if scope["query_string"] else await self._own_video(scope, video_id)
        if found is None:
            return None
        params, row = found
        video = videos.video_columns(row, user_id=params["user_id"])
        try:
            return await completed_file_response(
                Request(scope),
                self.context.storage,
                video,
                what,
                cache_control=PRIVATE_FILE_CACHE,
            )
        except ApiError as refusal:
            return _refused(refusal)

    async def video(self, scope: Scope, path_params: dict[str, str]) -> bytes | None:
        """`GET /api/videos/{id}`: session check and the video in one statement."""
        found = await self._own_video(scope, path_params["video_id"])
        return None if found is None else _json(videos.video_json(found[1]))

    async def video_list(self, scope: Scope, _path: dict[str, str]) -> bytes | None:
        """`GET /api/videos`: the session check with the count, then the page."""
        params = _signed_in(scope, self.context)
        query = _query(scope, _LISTING)
        paging = None if query is None else _paging(query)
        if params is None or query is None or paging is None:
            return None
        status = query.get("status")
        if status is not None and status not in videos.VIDEO_STATUSES:
            return None
        page, limit = paging
        count, listing = videos.LISTING_ALL if status is None else videos.LISTING_BY_STATUS
        params["status"] = status
        return await self._page(count, listing, params, page, limit, videos.video_json)

    async def balance(self, scope: Scope, _path: dict[str, str]) -> bytes | None:
        """`GET /api/credits/balance`: the balance is read with the session check."""
        params = _signed_in(scope, self.context)
        if params is None:
            return None
        row = await self.rows.one(account.CREDITS, params)
        return None if row is None else _json({"balance": row[0], "prices": self.prices})

    async def transactions(self, scope: Scope, _path: dict[str, str]) -> bytes | None:
        """`GET /api/credits/transactions`: the session check with the count, then the page."""
        params = _signed_in(scope, self.context)
        query = _query(scope, _PAGING)
        paging = None if query is None else _paging(query)
        if params is None or paging is None:
            return None
        page, limit = paging
        count, listing = ledger.TRANSACTION_COUNT, ledger.TRANSACTION_PAGE
        return await self._page(count, listing, params, page, limit, ledger.transaction_json)

    async def _page(
        self,
        count: Statement,
        listing: Statement,
        params: Params,
        page: int,
        limit: int,
        item_json: Callable[[Row], dict[str, Any]],
    ) -> bytes | None:
        """The count (no row: the session is not live, the route decides), then the page."""
        params |= {"limit": limit, "offset": (page - 1) * limit}
        total = await self.rows.one(count, params)
        if total is None:
            return None
        items = [item_json(row) for row in await self.rows.all(listing, params)]
        return _json({"page": page, "limit": limit, "total": total[0], "items": items})

    async def me(self, scope: Scope, _path: dict[str, str]) -> bytes | None:
        """`GET /api/auth/me`: the account is read with the session check."""
        params = _signed_in(scope, self.context)
        if params is None:
            return None
        row = await self.rows.one(account.ACCOUNT, params)
        if row is None:
            return None
        user_id, email, nickname, role, status, credits, created_at = row
        return _json(
            {
                "id": user_id,
                "email": email,
                "nickname": nickname,
                "role": role,
                "status": status,
                "credits": credits,
                "createdAt": utc(created_at),
            }
        )

    async def models(self, _scope: Scope, _path: dict[str, str]) -> bytes | None:
        """`GET /api/models`: the catalog does not change while the process runs."""
        return self.models_body


_CREATE = HotRoute("/api/videos")
_VIDEO_PREFIX = "/api/videos/"
_PER_VIDEO: dict[str, tuple[HotRoute, Answer]] = {
    "": (HotRoute("/api/videos/{video_id}"), HotRoutes.video),
    "events": (HotRoute("/api/videos/{video_id}/events"), HotRoutes.events),
    "content": (HotRoute("/api/videos/{video_id}/content"), HotRoutes.content),
    "thumbnail": (HotRoute("/api/videos/{video_id}/thumbnail"), HotRoutes.thumbnail),
}
_EXACT: dict[str, tuple[HotRoute, Answer]] = {
    "/api/videos": (HotRoute("/api/videos"), HotRoutes.video_list),
    "/api/credits/balance": (HotRoute("/api/credits/balance"), HotRoutes.balance),
    "/api/credits/transactions": (HotRoute("/api/credits/transactions"), HotRoutes.transactions),
    "/api/auth/me": (HotRoute("/api/auth/me"), HotRoutes.me),
    "/api/models": (HotRoute("/api/models"), HotRoutes.models),
}
