"""The lean anchor of issue 15: our api's hot routes, the same work done the shortest way.

A bare-ASGI app under uvicorn configured as `sora2 serve api` runs (uvloop, httptools, no access
log, one process, the same garbage-collector tuning), on the SAME database our api migrated
(`sora2 db upgrade`), through the raw drivers: an asyncpg pool on PostgreSQL (statements are
prepared and cached by asyncpg), the stdlib `sqlite3` on SQLite (WAL, autocommit, statements run
synchronously on the loop). Per request it keeps our api's guarantees:

- `Authorization: Bearer <jwt>`, HS256 with the same `JWT_SECRET`, `typ == "access"`, claims
  `sub` (user), `sid` (session) and `exp`; a verified token is remembered until its `exp`, as
  `sora2.api.auth.security.AccessTokens` does;
- every signed-in request reads from the database that its session is not revoked and its
  account is active, in ONE statement joined with the route's own read (session + user + video);
  no session row or a revoked one is a 401, a banned account a 403;
- only the caller's own rows (404 for anyone else's video);
- the same response bodies (camelCase JSON, timestamps as pydantic writes them), serialised with
  orjson; the same `X-Request-ID` and security headers.

Routes: `GET /api/videos/{id}`, `GET /api/videos` (count + page, newest first),
`GET /api/videos/{id}/events` (a final video: its `progress` and `done` events, then the end;
for an unfinished one only the first read's `progress` event is sent — the bench measures the
first read only), `GET /api/videos/{id}/content|thumbnail` (os.stat + a read of the range from
the local storage folder), `GET /api/credits/balance`, `GET /api/credits/transactions`,
`GET /api/auth/me`, `GET /api/models`, and `POST /api/videos` (validate against the catalog, then
in ONE transaction: a conditional charge that also checks the session, the video, its job and
the ledger row). Not here: cookies, idempotency keys, rate limits, multipart, metrics, CORS.

Run: `python -m bench._lean_api --port N` with our api's environment (DATABASE_URL, JWT_SECRET,
DATA_DIR or STORAGE_URL, the catalog's settings).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]
import jwt
import orjson
import uvicorn

from sora2.api.byte_ranges import MalformedRange, UnsatisfiableRange, parse_range
from sora2.catalog import PROMPT_MAX_CHARS, Catalog, load_catalog
from sora2.serving import LISTEN_BACKLOG, freeze_startup_objects, tune_garbage_collector
from sora2.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Row = Mapping[str, Any]

JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z  # pydantic's "…Z" for UTC datetimes
TOKENS_KEPT = 4096
FINAL = frozenset({"completed", "failed", "cancelled"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
FILE_COLUMNS = {
    "content": ("video_key", b"video/mp4"),
    "thumbnail": ("thumbnail_key", b"image/jpeg"),
}

# --- SQL: written for asyncpg ($n); SQLite takes the same text with ?n -------------------------

VIDEO_COLUMNS = (
    "v.id, v.prompt, v.model, v.seconds, v.size, v.status, v.progress, v.cost, v.error_code, "
    "v.error_message, v.video_key, v.thumbnail_key, v.input_reference_key, v.remix_of, "
    "v.video_bytes, v.created_at, v.updated_at, v.started_at, v.finished_at"
)
# The session check alone: $1 user id, $2 session id.
LIVE = "FROM auth_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $2 AND s.user_id = $1"
SQL_ME = (
    "SELECT s.revoked_at, u.status AS user_status, u.id, u.email, u.nickname, u.role, u.status, "
    f"u.credits, u.created_at {LIVE}"
)
SQL_BALANCE = f"SELECT s.revoked_at, u.status AS user_status, u.credits {LIVE}"
SQL_VIDEO = (
    f"SELECT s.revoked_at, u.status AS user_status, {VIDEO_COLUMNS} FROM auth_sessions s "
    "JOIN users u ON u.id = s.user_id LEFT JOIN videos v ON v.id = $3 AND v.user_id = u.id "
    "WHERE s.id = $2 AND s.user_id = $1"
)
SQL_VIDEO_COUNT = (
    "SELECT s.revoked_at, u.status AS user_status, "
    f"(SELECT count(*) FROM videos WHERE user_id = $1) AS total {LIVE}"
)
SQL_VIDEO_PAGE = (
    f"SELECT {VIDEO_COLUMNS} FROM videos v WHERE v.user_id = $1 "
    "ORDER BY v.created_at DESC, v.id DESC LIMIT $2 OFFSET $3"
)
SQL_LEDGER_COUNT = (
    "SELECT s.revoked_at, u.status AS user_status, "
    f"(SELECT count(*) FROM credit_transactions WHERE user_id = $1) AS total {LIVE}"
)
SQL_LEDGER_PAGE = (
    "SELECT id, amount, balance_after, type, video_id, description, created_at "
    "FROM credit_transactions WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3"
)
# The charge checks the session too: one statement, and only a refusal asks why (SQL_WHY_NOT).
SQL_CHARGE = (
    "UPDATE users SET credits = credits - $3, updated_at = $4 "
    "WHERE id = $1 AND credits >= $3 AND status = 'active' AND EXISTS (SELECT 1 FROM "
    "auth_sessions WHERE id = $2 AND user_id = $1 AND revoked_at IS NULL) RETURNING credits"
)
SQL_WHY_NOT = f"SELECT s.revoked_at, u.status AS user_status, u.credits {LIVE}"
SQL_INSERT_VIDEO = (
    "INSERT INTO videos (id, user_id, prompt, model, seconds, size, status, progress, cost, "
    "provider, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'queued', 0, $7, $8, $9, $9)"
)
SQL_INSERT_JOB = (
    "INSERT INTO jobs (video_id, status, attempts, run_after, created_at, updated_at) "
    "VALUES ($1, 'queued', 0, $2, $2, $2)"
)
SQL_INSERT_LEDGER = (
    "INSERT INTO credit_transactions (user_id, amount, balance_after, type, video_id, "
    "description, created_at) VALUES ($1, $2, $3, 'consume', $4, $5, $6)"
)


class Refused(Exception):
    """An answer other than success: status, title, message, details."""

    def __init__(
        self, status: int, error: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.details = status, error, message, details


class NewVideo(Protocol):
    id: str


class Database(Protocol):
    async def row(self, sql: str, *args: object) -> Row | None: ...

    async def row_and_rows(
        self, first: str, first_args: Sequence[object], then: str, then_args: Sequence[object]
    ) -> tuple[Row | None, list[Row]]:
        """`first`'s row, and `then`'s rows when `first` found the session live."""
        ...

    async def charge_and_insert(
        self, user_id: str, session_id: str, cost: int, video: Sequence[object], description: str
    ) -> int | None:
        """The balance after the charge (video, job and ledger row inserted), or None."""
        ...

    async def close(self) -> None: ...


def _live(row: Row | None) -> bool:
    return row is not None and row["revoked_at"] is None and row["user_status"] == "active"


class Postgres:
    """An asyncpg pool; asyncpg prepares and caches each statement per connection."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> Postgres:
        return cls(await asyncpg.create_pool(url, min_size=4, max_size=20))

    async def row(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await self.pool.fetchrow(sql, *args)
        return row

    async def row_and_rows(
        self, first: str, first_args: Sequence[object], then: str, then_args: Sequence[object]
    ) -> tuple[Row | None, list[Row]]:
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(first, *first_args)
            if not _live(row):
                return row, []
            return row, list(await connection.fetch(then, *then_args))

    async def charge_and_insert(
        self, user_id: str, session_id: str, cost: int, video: Sequence[object], description: str
    ) -> int | None:
        now = datetime.now(UTC)
        video_id = video[0]
        async with self.pool.acquire() as connection, connection.transaction():
            balance = await connection.fetchval(SQL_CHARGE, user_id, session_id, cost, now)
            if balance is None:
                return None
            await connection.execute(SQL_INSERT_VIDEO, *video, now)
            await connection.execute(SQL_INSERT_JOB, video_id, now)
            await connection.execute(
                SQL_INSERT_LEDGER, user_id, -cost, balance, video_id, description, now
            )
            return int(balance)

    async def close(self) -> None:
        await self.pool.close()


def _sqlite_time(value: bytes) -> datetime:
    return datetime.fromisoformat(value.decode())


def _sqlite_now() -> str:
    # SQLAlchemy's storage format for a naive UTC datetime on SQLite.
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class Sqlite:
    """One `sqlite3` connection in autocommit mode, used synchronously on the loop: a lean
    single-process server needs no thread hop for a read of a page cached in memory."""

    def __init__(self, path: str) -> None:
        # DATETIME columns (SQLAlchemy's type on SQLite) come back as naive UTC datetimes.
        sqlite3.register_converter("DATETIME", _sqlite_time)
        self.connection = sqlite3.connect(
            path, isolation_level=None, detect_types=sqlite3.PARSE_DECLTYPES
        )
        self.connection.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=10000",
            "PRAGMA synchronous=NORMAL",
        ):
            self.connection.execute(pragma)
        self._sql: dict[str, str] = {}

    def _text(self, sql: str) -> str:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = sql.replace("$", "?")
        return text

    async def row(self, sql: str, *args: object) -> Row | None:
        row: Row | None = self.connection.execute(self._text(sql), args).fetchone()
        return row

    async def row_and_rows(
        self, first: str, first_args: Sequence[object], then: str, then_args: Sequence[object]
    ) -> tuple[Row | None, list[Row]]:
        # Autocommit: the two reads are two snapshots, as our api's two statements are on SQLite
        # (its read connection commits nothing in between either; the counts can only grow).
        row = await self.row(first, *first_args)
        if not _live(row):
            return row, []
        return row, self.connection.execute(self._text(then), tuple(then_args)).fetchall()

    async def charge_and_insert(
        self, user_id: str, session_id: str, cost: int, video: Sequence[object], description: str
    ) -> int | None:
        now = _sqlite_now()
        video_id = video[0]
        run = self.connection.execute
        run("BEGIN IMMEDIATE")
        try:
            charged = run(self._text(SQL_CHARGE), (user_id, session_id, cost, now)).fetchone()
            if charged is None:
                run("ROLLBACK")
                return None
            balance = int(charged[0])
            run(self._text(SQL_INSERT_VIDEO), (*video, now))
            run(self._text(SQL_INSERT_JOB), (video_id, now))
            run(
                self._text(SQL_INSERT_LEDGER),
                (user_id, -cost, balance, video_id, description, now),
            )
            run("COMMIT")
        except BaseException:
            if self.connection.in_transaction:
                run("ROLLBACK")
            raise
        return balance

    async def close(self) -> None:
        self.connection.close()


class Tokens:
    """`AccessTokens.read`: PyJWT's full check once per token, then its claims until `exp`."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.known: dict[str, tuple[str, str, int]] = {}

    def read(self, token: str) -> tuple[str, str] | None:
        known = self.known.get(token)
        if known is not None:
            if time.time() < known[2]:
                return known[0], known[1]
            del self.known[token]
            return None
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"], options={"require": ["sub", "sid", "exp"]}
            )
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != "access":
            return None
        if len(self.known) >= TOKENS_KEPT:
            del self.known[next(iter(self.known))]
        user_id, session_id = str(claims["sub"]), str(claims["sid"])
        self.known[token] = (user_id, session_id, int(claims["exp"]))
        return user_id, session_id


def video_body(row: Row) -> dict[str, Any]:
    """`VideoOut` as our api writes it (camelCase; the computed URLs last)."""
    video_id = row["id"]
    completed = row["status"] == "completed"
    return {
        "id": video_id,
        "prompt": row["prompt"],
        "model": row["model"],
        "seconds": row["seconds"],
        "size": row["size"],
        "status": row["status"],
        "progress": row["progress"],
        "cost": row["cost"],
        "errorCode": row["error_code"],
        "errorMessage": row["error_message"],
        "videoBytes": row["video_bytes"],
        "remixOf": row["remix_of"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "startedAt": row["started_at"],
        "finishedAt": row["finished_at"],
        "contentUrl": f"/api/videos/{video_id}/content" if completed else None,
        "inputReferenceUrl": (
            f"/api/videos/{video_id}/input_reference" if row["input_reference_key"] else None
        ),
        "thumbnailUrl": f"/api/videos/{video_id}/thumbnail" if completed else None,
    }


def _check_live(row: Row | None) -> Row:
    if row is None or row["revoked_at"] is not None:
        raise Refused(401, "Unauthorized", "This session has ended: sign in again.")
    if row["user_status"] != "active":
        raise Refused(403, "Forbidden", "This account is suspended. Contact support.")
    return row


def _not_found() -> Refused:
    return Refused(404, "Not Found", "This video does not exist or is not yours.")


def _page_params(query: bytes) -> tuple[int, int]:
    page, limit = 1, 20
    for name, value in parse_qsl(query.decode("latin-1")):
        if name in ("page", "limit"):
            if not value.isdigit():
                raise Refused(422, "Validation Error", f"Invalid request: {name}: not a number.")
            number = int(value)
            if name == "page":
                page = number
            else:
                limit = number
    if not (1 <= page <= 100_000 and 1 <= limit <= 100):
        raise Refused(422, "Validation Error", "Invalid request: page or limit out of range.")
    return page, limit


class LeanApi:
    """The ASGI app: a route per path, each one function."""

    def __init__(self, settings: Settings, catalog: Catalog, database_url: str) -> None:
        self.tokens = Tokens(settings.resolved_jwt_secret())
        self.catalog = catalog
        self.database_url = database_url
        self.db: Database | None = None
        storage = urlsplit(settings.resolved_storage_url)
        if storage.scheme != "file":
            raise SystemExit("the lean anchor serves files from a file:// store only")
        self.storage_root = Path(unquote(storage.path))
        self.models_body = orjson.dumps({"items": catalog.public()})
        self.prices = catalog.prices()

    # --- the ASGI surface ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        request_id = _request_id(scope)
        try:
            await self._route(scope, receive, send, request_id)
        except Refused as refused:
            body = {
                "error": refused.error,
                "message": refused.message,
                "details": refused.details or {},
                "requestId": request_id,
            }
            await _json(send, refused.status, orjson.dumps(body), request_id)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                url = self.database_url
                if url.startswith("sqlite"):
                    self.db = Sqlite(url.split(":///", 1)[1])
                else:
                    self.db = await Postgres.open(url.replace("+asyncpg", "", 1))
                freeze_startup_objects()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.db is not None:
                    await self.db.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/api/health/live":
            await _json(send, 200, b'{"status":"ok"}', request_id)
            return
        if path == "/api/models" and method == "GET":
            await _json(send, 200, self.models_body, request_id)
            return
        ids = self._caller(scope)
        if path == "/api/videos":
            if method == "POST":
                body = await self.create(ids, await _body(receive))
                await _json(send, 202, orjson.dumps(body, option=JSON_OPTIONS), request_id)
                return
            answer = await self.list_videos(ids, scope["query_string"])
        elif path.startswith("/api/videos/") and method == "GET":
            video_id, _, what = path[len("/api/videos/") :].partition("/")
            if what == "":
                answer = await self.get_video(ids, video_id)
            elif what == "events":
                await self.events(ids, video_id, scope, send, request_id)
                return
            elif what in FILE_COLUMNS:
                await self.file(ids, video_id, what, scope, send, request_id)
                return
            else:
                raise Refused(404, "Not Found", "No such route.")
        elif path == "/api/credits/balance":
            answer = await self.balance(ids)
        elif path == "/api/credits/transactions":
            answer = await self.transactions(ids, scope["query_string"])
        elif path == "/api/auth/me":
            answer = await self.me(ids)
        else:
            raise Refused(404, "Not Found", "No such route.")
        await _json(send, 200, orjson.dumps(answer, option=JSON_OPTIONS), request_id)

    def _caller(self, scope: Scope) -> tuple[str, str]:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    ids = self.tokens.read(token.strip())
                    if ids is None:
                        raise Refused(
                            401,
                            "Unauthorized",
                            "Your access token is invalid or expired: refresh it or sign in again.",
                        )
                    return ids
        raise Refused(
            401,
            "Unauthorized",
            "Sign in first: send the session cookie or an Authorization: Bearer token.",
        )

    @property
    def _db(self) -> Database:
        assert self.db is not None
        return self.db

    # --- routes --------------------------------------------------------------------------------

    async def _own_video(self, ids: tuple[str, str], video_id: str) -> Row:
        """Session + account + the caller's video, one statement."""
        row = _check_live(await self._db.row(SQL_VIDEO, *ids, video_id))
        if row["id"] is None:
            raise _not_found()
        return row

    async def get_video(self, ids: tuple[str, str], video_id: str) -> dict[str, Any]:
        return video_body(await self._own_video(ids, video_id))

    async def list_videos(self, ids: tuple[str, str], query: bytes) -> dict[str, Any]:
        page, limit = _page_params(query)
        head, rows = await self._db.row_and_rows(
            SQL_VIDEO_COUNT, ids, SQL_VIDEO_PAGE, (ids[0], limit, (page - 1) * limit)
        )
        total = _check_live(head)["total"]
        items = [video_body(row) for row in rows]
        return {"page": page, "limit": limit, "total": total, "items": items}

    async def transactions(self, ids: tuple[str, str], query: bytes) -> dict[str, Any]:
        page, limit = _page_params(query)
        head, rows = await self._db.row_and_rows(
            SQL_LEDGER_COUNT, ids, SQL_LEDGER_PAGE, (ids[0], limit, (page - 1) * limit)
        )
        total = _check_live(head)["total"]
        items = [
            {
                "id": row["id"],
                "amount": row["amount"],
                "balanceAfter": row["balance_after"],
                "type": row["type"],
                "videoId": row["video_id"],
                "description": row["description"],
                "createdAt": row["created_at"],
            }
            for row in rows
        ]
        return {"page": page, "limit": limit, "total": total, "items": items}

    async def balance(self, ids: tuple[str, str]) -> dict[str, Any]:
        row = _check_live(await self._db.row(SQL_BALANCE, *ids))
        return {"balance": row["credits"], "prices": self.prices}

    async def me(self, ids: tuple[str, str]) -> dict[str, Any]:
        row = _check_live(await self._db.row(SQL_ME, *ids))
        return {
            "id": row["id"],
            "email": row["email"],
            "nickname": row["nickname"],
            "role": row["role"],
            "status": row["status"],
            "credits": row["credits"],
            "createdAt": row["created_at"],
        }

    async def events(
        self, ids: tuple[str, str], video_id: str, scope: Scope, send: Send, request_id: str
    ) -> None:
        """The stream's first read and what it sends for it (`live.VideoState`)."""
        row = await self._own_video(ids, video_id)
        key = f"{row['status']}-{row['progress']}"
        final = row["status"] in FINAL
        last_event_id = _header(scope, b"last-event-id")
        if final and last_event_id == f"{key}-done":
            await _start(send, 204, [], request_id)
            await send({"type": "http.response.body", "body": b""})
            return
        snapshot = orjson.dumps(video_body(row), option=JSON_OPTIONS)
        events = b"" if last_event_id == key else _frame(b"progress", key, snapshot)
        if final:
            events += _frame(b"done", f"{key}-done", snapshot)
        headers = [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"content-type", b"text/event-stream; charset=utf-8"),
        ]
        if final:  # all of it is known: one body with its length, as ours answers
            headers.append((b"content-length", str(len(events)).encode()))
            await _start(send, 200, headers, request_id)
            await send({"type": "http.response.body", "body": events})
            return
        await _start(send, 200, headers, request_id)
        await send({"type": "http.response.body", "body": events, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def file(
        self,
        ids: tuple[str, str],
        video_id: str,
        what: str,
        scope: Scope,
        send: Send,
        request_id: str,
    ) -> None:
        """The completed video's MP4 or thumbnail: os.stat, then a read of the range asked for."""
        row = await self._own_video(ids, video_id)
        column, media_type = FILE_COLUMNS[what]
        noun = "video" if what == "content" else "thumbnail"
        key = row[column]
        if row["status"] != "completed" or key is None:
            raise Refused(
                409,
                "Conflict",
                f"This video is {row['status']}: its {noun} exists once it has completed.",
                {"status": row["status"]},
            )
        path = self.storage_root / key
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise Refused(
                404, "Not Found", f"The {noun} file of this video is missing from storage."
            ) from None
        size = stat.st_size
        etag = f'"{stat.st_ino:x}-{stat.st_mtime_ns // 1000:x}-{size:x}"'
        modified = format_datetime(datetime.fromtimestamp(stat.st_mtime, UTC), usegmt=True)
        headers = [
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"private, max-age=3600"),
            (b"last-modified", modified.encode()),
            (b"etag", etag.encode()),
        ]
        start, end, status = 0, size, 200
        wanted = _header(scope, b"range")
        condition = _header(scope, b"if-range")
        if wanted is not None and (condition is None or condition.strip() in (etag, modified)):
            try:
                byte_range = parse_range(wanted, size)
            except MalformedRange:
                raise Refused(
                    400, "Bad Request", "The Range header is malformed: send e.g. 'bytes=0-1023'."
                ) from None
            except UnsatisfiableRange:
                raise Refused(
                    416,
                    "Range Not Satisfiable",
                    f"The requested range is outside the file ({size} bytes).",
                    {"size": size},
                ) from None
            if byte_range is not None:
                start, end, status = byte_range.start, byte_range.end, 206
                headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
        headers += [(b"content-length", str(len(data)).encode()), (b"content-type", media_type)]
        await _start(send, status, headers, request_id)
        await send({"type": "http.response.body", "body": data})

    async def create(self, ids: tuple[str, str], raw: bytes) -> dict[str, Any]:
        """Validate against the catalog; then charge, insert the video, its job and the ledger
        row in one transaction (the charge's UPDATE also checks the session and the account)."""
        prompt, model_id, seconds, size = _create_fields(raw)
        model = self.catalog.default if model_id is None else self.catalog.get(model_id)
        if model is None:
            raise _invalid("model", f"{model_id!r} is not offered")
        seconds = model.default_seconds if seconds is None else seconds
        if (refusal := model.seconds_refusal(seconds)) is not None:
            raise _invalid("seconds", refusal)
        size = model.default_size if size is None else size
        if (refusal := model.size_refusal(size)) is not None:
            raise _invalid("size", refusal)
        cost = model.cost(seconds)
        user_id, session_id = ids
        video_id = str(uuid.uuid4())
        video = (video_id, user_id, prompt, model.id, seconds, size, cost, model.provider)
        balance = await self._db.charge_and_insert(
            user_id, session_id, cost, video, f"{model.id}, {seconds} s, {size}"
        )
        if balance is None:
            why = _check_live(await self._db.row(SQL_WHY_NOT, *ids))
            raise Refused(
                402,
                "Insufficient Credits",
                f"This video costs {cost} credits and your balance is {why['credits']}.",
                {"balance": why["credits"], "cost": cost},
            )
        now = datetime.now(UTC)
        return {
            "id": video_id,
            "prompt": prompt,
            "model": model.id,
            "seconds": seconds,
            "size": size,
            "status": "queued",
            "progress": 0,
            "cost": cost,
            "errorCode": None,
            "errorMessage": None,
            "videoBytes": None,
            "remixOf": None,
            "createdAt": now,
            "updatedAt": now,
            "startedAt": None,
            "finishedAt": None,
            "balance": balance,
            "contentUrl": None,
            "inputReferenceUrl": None,
            "thumbnailUrl": None,
        }


def _create_fields(raw: bytes) -> tuple[str, str | None, int | None, str | None]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(422, "Validation Error", "Invalid request: body: invalid JSON.") from None
    if not isinstance(document, dict):
        raise Refused(422, "Validation Error", "Invalid request: body: must be an object.")
    unknown = set(document) - {"prompt", "model", "seconds", "size"}
    if unknown:
        raise _invalid(sorted(unknown)[0], "extra inputs are not permitted")
    prompt = document.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt.strip()) <= PROMPT_MAX_CHARS:
        raise _invalid("prompt", f"1 to {PROMPT_MAX_CHARS} characters")
    seconds = document.get("seconds")
    if seconds is not None and (
        not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= 3600
    ):
        raise _invalid("seconds", "a whole number from 1 to 3600")
    texts: list[str | None] = []
    for name in ("model", "size"):
        value = document.get(name)
        if value is not None and not isinstance(value, str):
            raise _invalid(name, "must be text")
        texts.append(value.strip() if value is not None else None)
    for value in (prompt, *texts):
        if value is not None and "\x00" in value:
            raise _invalid("prompt", "contains a NUL character")
    return prompt.strip(), texts[0], seconds, texts[1]


def _invalid(field: str, message: str) -> Refused:
    return Refused(
        422,
        "Validation Error",
        f"Invalid request: {field}: {message}.",
        {"fields": [{"field": field, "message": message}]},
    )


def _frame(name: bytes, event_id: str, data: bytes) -> bytes:
    return b"id: " + event_id.encode() + b"\nevent: " + name + b"\ndata: " + data + b"\n\n"


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            text: str = value.decode("latin-1")
            return text
    return None


def _request_id(scope: Scope) -> str:
    given = _header(scope, b"x-request-id")
    if given and len(given) <= 128:
        return given
    return uuid.uuid4().hex


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _start(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], request_id: str
) -> None:
    headers = [*headers, (b"x-request-id", request_id.encode()), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _json(send: Send, status: int, body: bytes, request_id: str) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await _start(send, status, headers, request_id)
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._lean_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    tune_garbage_collector()
    settings = Settings()
    app = LeanApi(settings, load_catalog(settings), settings.resolved_database_url)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
        loop="uvloop",
        http="httptools",
        backlog=LISTEN_BACKLOG,
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
