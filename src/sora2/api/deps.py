"""Typed FastAPI dependencies: the app context, a database session, the signed-in user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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
    """GET and HEAD only read (a rule every route keeps), so they get a read session."""
    database = context.database
    opened = database.read_session() if request.method in READ_ONLY_METHODS else database.session()
    async with opened as session:
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


async def get_current_session(
    request: Request, context: Context, session: SessionDep
) -> tuple[User, str]:
    """The signed-in user and their session id; 401 unless the token and session are live."""
    token = _bearer_or_cookie(request)
    if token is None:
        raise unauthorized(
            "Sign in first: send the session cookie or an Authorization: Bearer token."
        )
    claims = context.tokens.read(token)
    if claims is None:
        raise unauthorized("Your access token is invalid or expired: refresh it or sign in again.")
    row = (
        await session.execute(
            select(User, AuthSession.revoked_at)
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(User.id == claims.user_id, AuthSession.id == claims.session_id)
        )
    ).first()
    if row is None or row[1] is not None:
        raise unauthorized("This session has ended: sign in again.")
    user: User = row[0]
    if user.status != "active":
        raise ApiError(403, "Forbidden", "This account is suspended. Contact support.")
    return user, claims.session_id


CurrentSession = Annotated[tuple[User, str], Depends(get_current_session)]


async def get_current_user(current: CurrentSession) -> User:
    return current[0]


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise ApiError(403, "Forbidden", "This needs an administrator account.")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
