"""Password reset by mail: a random token, stored hashed, single use, short-lived.

Asking (`request_reset`) answers the same whether or not the email has an account — the caller
says the same thing either way and the mail goes out in the background, so neither the answer nor
its timing tells who has an account. Using a token (`reset_password`) spends it with a conditional
UPDATE (of two concurrent uses exactly one wins), sets the new password, spends every other open
token of the account and ends every session of the account.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.auth.models import AuthSession
from sora2.api.auth.reset_models import PasswordResetToken
from sora2.api.db.base import utcnow
from sora2.api.errors import ApiError
from sora2.api.mail import Mail
from sora2.api.users.models import User

TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """Tokens are 256 random bits: a plain SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedReset:
    email: str
    nickname: str
    token: str


async def request_reset(
    session: AsyncSession, *, email: str, ttl_minutes: int
) -> IssuedReset | None:
    """A new token for the active account with this email, in the caller's transaction; None
    when there is no such account (the caller must not let that show)."""
    user = (
        await session.execute(select(User).where(User.email == email, User.status == "active"))
    ).scalar_one_or_none()
    if user is None:
        return None
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(
        PasswordResetToken(
            user_id=user.id,
            token_hash=hash_token(token),
            expires_at=utcnow() + timedelta(minutes=ttl_minutes),
        )
    )
    await session.flush()
    return IssuedReset(email=user.email, nickname=user.nickname, token=token)


def invalid_token() -> ApiError:
    return ApiError(
        400,
        "Bad Request",
        "This reset link is invalid, expired or already used: ask for a new one.",
        details={"fields": [{"field": "token", "message": "is invalid, expired or used"}]},
    )


async def user_of_token(session: AsyncSession, token: str) -> str:
    """The account a live token belongs to (checked before the slow hash); 400 otherwise."""
    row = (
        await session.execute(
            select(PasswordResetToken.user_id).where(
                PasswordResetToken.token_hash == hash_token(token),
                PasswordResetToken.used_at.is_(None),
                PasswordResetToken.expires_at > utcnow(),
            )
        )
    ).first()
    if row is None:
        raise invalid_token()
    return str(row.user_id)


async def reset_password(session: AsyncSession, *, token: str, password_hash: str) -> str:
    """Spends the token and sets the password; every session of the account ends. Returns the
    user id. 400 when the token is not live (any more)."""
    now = utcnow()
    spent = (
        await session.execute(
            update(PasswordResetToken)
            .where(
                PasswordResetToken.token_hash == hash_token(token),
                PasswordResetToken.used_at.is_(None),
                PasswordResetToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(PasswordResetToken.user_id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if spent is None:
        raise invalid_token()
    user_id = str(spent.user_id)
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_hash=password_hash, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.user_id == user_id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="password_reset")
        .execution_options(synchronize_session=False)
    )
    return user_id


def reset_link(frontend_url: str, token: str) -> str:
    return f"{frontend_url}/reset-password?token={quote(token)}"


def reset_mail(issued: IssuedReset, *, link: str, ttl_minutes: int) -> Mail:
    from html import escape

    text = (
        f"Hello {issued.nickname},\n\n"
        "Someone (we hope you) asked to reset the password of your Sora2 account.\n"
        f"Choose a new password here (the link works once, for {ttl_minutes} minutes):\n\n"
        f"{link}\n\n"
        "If you did not ask, ignore this mail: your password stays as it is.\n"
    )
    html = (
        "<!doctype html><html><body>"
        f"<p>Hello {escape(issued.nickname)},</p>"
        "<p>Someone (we hope you) asked to reset the password of your Sora2 account.</p>"
        f'<p><a href="{escape(link)}">Choose a new password</a> '
        f"(the link works once, for {ttl_minutes} minutes).</p>"
        "<p>If you did not ask, ignore this mail: your password stays as it is.</p>"
        "</body></html>"
    )
    return Mail(to=issued.email, subject="Reset your Sora2 password", text=text, html=html)
