"""The hot read routes' usual answer, without FastAPI's dependency resolution or SQLAlchemy.

Most of the api's traffic is a handful of signed-in GETs: a video (which pages poll), the list,
the balance, the ledger, the account, the model list. Through FastAPI and SQLAlchemy each cost
five to six times the CPU of a lean handler doing the same work: dependency resolution, statement
execution and result processing, a transaction around a single read, response validation.

`HotRoutes` sits in front of FastAPI's router and answers these routes' *successful* case
itself: the token's claims (cached signature check), then one driver statement that reads the
route's rows only if the session is live and the account active (`sora2.api.db.rows`), then
orjson. Whenever that case does not hold — no or bad token, a revoked session, a suspended
account, someone else's or no video, a query parameter it does not take as given — it answers
nothing and the request goes on to the FastAPI route, which decides as it always has. So every
refusal, error shape and the OpenAPI document stay FastAPI's; tests hold the two paths' success
bodies to the same bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from sora2.api.auth import reads as account
from sora2.api.catalog.routes import model_list
from sora2.api.context import ApiContext
from sora2.api.credits import reads as ledger
from sora2.api.db.rows import Rows, utc
from sora2.api.deps import ACCESS_COOKIE
from sora2.api.videos import reads as videos

Params = dict[str, Any]
Answer = Callable[["HotRoutes", Scope, dict[str, str]], Awaitable[bytes | None]]

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


_PAGING = frozenset({"page", "limit"})
_LISTING = frozenset({"page", "limit", "status"})


class HotRoutes:
    """ASGI middleware: the successful case of the hot GET routes, or on to FastAPI."""

    def __init__(self, app: ASGIApp, context: ApiContext, rows: Rows) -> None:
        self.app = app
        self.context = context
        self.rows = rows
        self.models_body = _json(model_list(context.catalog).model_dump(mode="json"))
        self.prices = context.catalog.prices()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            route = self._route(scope["path"])
            if route is not None:
                template, answer, path_params = route
                body = await answer(self, scope, path_params)
                if body is not None:
                    scope["route"] = template
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                *_JSON_HEADERS,
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    def _route(self, path: str) -> tuple[HotRoute, Answer, dict[str, str]] | None:
        exact = _EXACT.get(path)
        if exact is not None:
            return exact[0], exact[1], {}
        if path.startswith(_VIDEO_PREFIX):
            video_id = path[len(_VIDEO_PREFIX) :]
            if video_id and "/" not in video_id:
                return _VIDEO, HotRoutes.video, {"video_id": video_id}
        return None

    async def video(self, scope: Scope, path_params: dict[str, str]) -> bytes | None:
        """`GET /api/videos/{id}`: session check and the video in one statement."""
        params = _signed_in(scope, self.context)
        if params is None:
            return None
        params["video_id"] = path_params["video_id"]
        row = await self.rows.one(videos.OWN_VIDEO, params)
        return None if row is None else _json(videos.video_json(row))

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
        params |= {"status": status, "limit": limit, "offset": (page - 1) * limit}
        total = await self.rows.one(count, params)
        if total is None:
            return None
        rows = await self.rows.all(listing, params)
        items = [videos.video_json(row) for row in rows]
        return _json({"page": page, "limit": limit, "total": total[0], "items": items})

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
        params |= {"limit": limit, "offset": (page - 1) * limit}
        total = await self.rows.one(ledger.TRANSACTION_COUNT, params)
        if total is None:
            return None
        rows = await self.rows.all(ledger.TRANSACTION_PAGE, params)
        items = [ledger.transaction_json(row) for row in rows]
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


_VIDEO_PREFIX = "/api/videos/"
_VIDEO = HotRoute("/api/videos/{video_id}")
_EXACT: dict[str, tuple[HotRoute, Answer]] = {
    "/api/videos": (HotRoute("/api/videos"), HotRoutes.video_list),
    "/api/credits/balance": (HotRoute("/api/credits/balance"), HotRoutes.balance),
    "/api/credits/transactions": (HotRoute("/api/credits/transactions"), HotRoutes.transactions),
    "/api/auth/me": (HotRoute("/api/auth/me"), HotRoutes.me),
    "/api/models": (HotRoute("/api/models"), HotRoutes.models),
}
