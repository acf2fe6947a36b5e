"""Account and session rules: sign-up with a gift, sign-in, rotating refresh, revocation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.auth.models import AuthSession, RefreshToken
from sora2.api.auth.security import Passwords, hash_refresh_token, new_refresh_token, refresh_expiry
from sora2.api.credits.service import apply_change
from sora2.api.db.base import utcnow
from sora2.api.db.transaction import end_before_slow_work
from sora2.api.errors import ApiError, unauthorized
from sora2.api.users.models import User


@dataclass(frozen=True, slots=True)
class IssuedSession:
    session_id: str
    refresh_token: str


async def create_user(
    session: AsyncSession,
    *,
    passwords: Passwords,
    email: str,
    password: str,
    nickname: str,
    signup_credits: int,
    role: str = "user",
) -> User:
    """A new account and its sign-up gift, in the caller's transaction; 409 if the email is used."""
    user = User(
        email=email.strip().lower(),
        password_hash=await passwords.hash(password),
        nickname=nickname,
        role=role,
        credits=0,
    )
    try:
        async with session.begin_nested():  # a taken email undoes this insert, not the caller's
            session.add(user)
    except IntegrityError:
        raise ApiError(
            409, "Conflict", "An account with this email already exists: sign in instead."
        ) from None
    if signup_credits > 0:
        await apply_change(
            session, user_id=user.id, amount=signup_credits, kind="gift", description="Welcome gift"
        )
        user.credits = signup_credits
    return user


async def authenticate(
    session: AsyncSession, *, passwords: Passwords, email: str, password: str
) -> User:
    user = (
        await session.execute(select(User).where(User.email == email.strip().lower()))
    ).scalar_one_or_none()
    await end_before_slow_work(session)  # on SQLite an open transaction holds the write lock
    # Unknown emails verify a decoy hash: a faster answer would reveal who has an account.
    ok = await passwords.verify(password, user.password_hash if user else None)
    if user is None or not ok:
        raise unauthorized("Wrong email or password.")
    if user.status != "active":
        raise ApiError(403, "Forbidden", "This account is suspended. Contact support.")
    return user


async def start_session(session: AsyncSession, *, user_id: str, ttl_days: int) -> IssuedSession:
    auth_session = AuthSession(user_id=user_id)
    session.add(auth_session)
    await session.flush()
    token = await _add_refresh_token(session, session_id=auth_session.id, ttl_days=ttl_days)
    return IssuedSession(auth_session.id, token)


async def _add_refresh_token(session: AsyncSession, *, session_id: str, ttl_days: int) -> str:
    token = new_refresh_token()
    session.add(
        RefreshToken(
            session_id=session_id,
            token_hash=hash_refresh_token(token),
            expires_at=refresh_expiry(ttl_days),
        )
    )
    await session.flush()
    return token


async def rotate(
    session: AsyncSession, *, refresh_token: str, ttl_days: int, reuse_grace_seconds: float
) -> tuple[str, IssuedSession]:
    """Spends a refresh token for a new one; a spent token coming back revokes its whole session.

    Returns the user id and the new token. The spend is a conditional UPDATE, so of two
    concurrent uses exactly one spends it. The other is reuse, unless it comes within
    `reuse_grace_seconds` of the spend: two tabs of one browser refreshing at the same moment
    must not sign the person out, so that one gets a token of the same session too.
    """
    found = (
        await session.execute(
            select(RefreshToken, AuthSession)
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
        )
    ).first()
    if found is None:
        raise unauthorized("This refresh token is not valid: sign in again.")
    token, auth_session = found
    if auth_session.revoked_at is not None:
        raise unauthorized("This session has ended: sign in again.")
    if token.expires_at <= utcnow():
        raise unauthorized("This refresh token has expired: sign in again.")
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
        .values(used_at=utcnow())
        .returning(RefreshToken.id)
        .execution_options(synchronize_session=False)
    )
    if spent.first() is None and not await _spent_within(session, token.id, reuse_grace_seconds):
        await revoke_session(session, session_id=auth_session.id, reason="refresh_reuse")
        refused = unauthorized(
            "This refresh token was already used, so the session was ended for safety: "
            "sign in again."
        )
        refused.keep_transaction = True  # the refusal stands on the revocation: commit it
        raise refused
    new_token = await _add_refresh_token(session, session_id=auth_session.id, ttl_days=ttl_days)
    return auth_session.user_id, IssuedSession(auth_session.id, new_token)


async def _spent_within(session: AsyncSession, token_id: int, seconds: float) -> bool:
    used_at = (
        await session.execute(select(RefreshToken.used_at).where(RefreshToken.id == token_id))
    ).scalar_one_or_none()
    return used_at is not None and utcnow() - used_at <= timedelta(seconds=seconds)


async def revoke_session(session: AsyncSession, *, session_id: str, reason: str) -> None:
    await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )


async def revoke_other_sessions(session: AsyncSession, *, user_id: str, keep: str) -> None:
    await session.execute(
        update(AuthSession)
        .where(
            AuthSession.user_id == user_id, AuthSession.id != keep, AuthSession.revoked_at.is_(None)
        )
        .values(revoked_at=utcnow(), revoked_reason="password_changed")
        .execution_options(synchronize_session=False)
    )


async def session_of_refresh_token(session: AsyncSession, refresh_token: str) -> str | None:
    return (
        await session.execute(
            select(RefreshToken.session_id).where(
                RefreshToken.token_hash == hash_refresh_token(refresh_token)
            )
        )
    ).scalar_one_or_none()
