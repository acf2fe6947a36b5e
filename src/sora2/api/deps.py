"""Typed FastAPI dependencies: the app context, a database session, the signed-in user.

Read routes on the hot path take `ReadConnection` and `CallerDep` (Core, no ORM session);
routes that write, or hand the user's ORM object on, take `SessionDep` and `CurrentUser`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from sora2.api.auth.models import AuthSession
from sora2.api.context import ApiContext
from sora2.api.errors import ApiError, unauthorized
from sora2.api.users.models import User

ACCESS_COOKIE = "sora2_access"
REFRESH_COOKIE = "sora2_refresh"


# Dependencies are `async def` even when they do not await: FastAPI runs plain `def` ones in a
# thread pool, two thread hops per request that cost more than the request's own work.
async def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(get_context)]


READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


async def get_session(request: Request, context: Context) -> AsyncIterator[AsyncSession]:
    """The request's session, and the owner of its transaction.

    GET and HEAD only read (a rule every route keeps), so they get a read session that is
    never committed. Any other method's transaction is committed here when the endpoint
    returns, before the response is sent (a failed commit is an error answer, never a success),
    and rolled back when it raises, so a refusal leaves the database as it found it. Services
    only flush; `db.transaction` has the hooks and the one deliberate early commit."""
    database = context.database
    if request.method in READ_ONLY_METHODS:
        async with database.read_session() as session:
            yield session
        return
    async with database.transaction() as session:
        yield session


# Closed when the endpoint returns, not when the response has been sent: a download or an event
# stream must not hold a database connection (on SQLite: the one connection and its write lock)
# for as long as the client takes to read it.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def client_ip(request: Request, context: Context) -> str:
    peer = request.client.host if request.client else None
    return context.client_address.of(peer, request.headers.get("x-forwarded-for"))


ClientIp = Annotated[str, Depends(client_ip)]


def _bearer_or_cookie(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(ACCESS_COOKIE)


def _claims(request: Request, context: ApiContext) -> dict[str, str]:
    """The ids the access token names, as query parameters; 401 without a valid token."""
    token = _bearer_or_cookie(request)
    if token is None:
        raise unauthorized(
            "Sign in first: send the session cookie or an Authorization: Bearer token."
        )
    claims = context.tokens.read(token)
    if claims is None:
        raise unauthorized("Your access token is invalid or expired: refresh it or sign in again.")
    return {"user_id": claims.user_id, "session_id": claims.session_id}


def _refuse_unless_live(revoked_at: datetime | None, status: str) -> None:
    if revoked_at is not None:
        raise _session_ended()
    if status != "active":
        raise ApiError(403, "Forbidden", "This account is suspended. Contact support.")


def _session_ended() -> ApiError:
    return unauthorized("This session has ended: sign in again.")


def _of_live_session(*columns: Any) -> Select[Any]:
    return (
        select(*columns, AuthSession.revoked_at)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(User.id == bindparam("user_id"), AuthSession.id == bindparam("session_id"))
    )


# Built once with bound parameters: composing a statement costs more CPU than running it.
# Every request asks the database whether its session is still live, so a revoked session is
# refused at once (tokens are only remembered for their signature check, see AccessTokens).
_USER_QUERY = _of_live_session(User)
_CALLER_QUERY = _of_live_session(User.id, User.role, User.status, User.credits)


async def get_current_session(
    request: Request, context: Context, session: SessionDep
) -> tuple[User, str]:
    """The signed-in user and their session id; 401 unless the token and session are live."""
    ids = _claims(request, context)
    row = (await session.execute(_USER_QUERY, ids)).first()
    if row is None:
        raise _session_ended()
    user: User = row[0]
    _refuse_unless_live(row.revoked_at, user.status)
    return user, ids["session_id"]


CurrentSession = Annotated[tuple[User, str], Depends(get_current_session)]


async def get_current_user(current: CurrentSession) -> User:
    return current[0]


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise ApiError(403, "Forbidden", "This needs an administrator account.")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


async def get_read_connection(context: Context) -> AsyncIterator[AsyncConnection]:
    async with context.database.read_connection() as connection:
        yield connection


# For read routes: SQLAlchemy Core on a plain connection, no ORM session. The session's unit of
# work, identity map and object loading cost about as much CPU as the rest of such a request.
ReadConnection = Annotated[AsyncConnection, Depends(get_read_connection, scope="function")]


@dataclass(frozen=True, slots=True)
class Caller:
    """The signed-in user as read routes need them: a few columns, no ORM object."""

    id: str
    role: str
    credits: int


async def get_caller(request: Request, context: Context, connection: ReadConnection) -> Caller:
    """What `get_current_session` checks, answered with Core on the request's read connection."""
    ids = _claims(request, context)
    row = (await connection.execute(_CALLER_QUERY, ids)).first()
    if row is None:
        raise _session_ended()
    _refuse_unless_live(row.revoked_at, row.status)
    return Caller(id=row.id, role=row.role, credits=row.credits)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_session_id(request: Request, context: Context) -> str:
    """The id of the sign-in session the caller's token names (after `CallerDep` checked it)."""
    return _claims(request, context)["session_id"]


SessionId = Annotated[str, Depends(get_session_id)]
