"""`/api/auth/password/forgot` and `/api/auth/password/reset`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import Field

from sora2.api.auth import reset
from sora2.api.auth.schemas import MessageOut
from sora2.api.db import transaction
from sora2.api.deps import ClientIp, Context, SessionDep
from sora2.api.errors import ERROR_RESPONSES
from sora2.api.schemas import Input
from sora2.api.users.schemas import Email, Password

router = APIRouter(prefix="/api/auth/password", tags=["auth"], responses=ERROR_RESPONSES)

FORGOT_ANSWER = (
    "If an account uses this email, a link to choose a new password is on its way. "
    "It works once, for a limited time."
)


class ForgotIn(Input):
    email: Email


class ResetIn(Input):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    password: Password


@router.post("/forgot", response_model=MessageOut, status_code=202)
async def forgot_password(
    body: ForgotIn, context: Context, session: SessionDep, ip: ClientIp
) -> MessageOut:
    """Mail a reset link to the account with this email, if there is one. The answer (body,
    status and time) is the same either way; limited per email and per address."""
    settings = context.settings
    await context.limiter.check_and_record(
        f"forgot:ip:{ip}", settings.forgot_limit_per_ip, "reset requests from your address"
    )
    await context.limiter.check_and_record(
        f"forgot:email:{body.email}",
        settings.forgot_limit_per_email,
        "reset requests for this email",
    )
    ttl = settings.password_reset_ttl_minutes
    issued = await reset.request_reset(session, email=body.email, ttl_minutes=ttl)
    if issued is not None:
        # Mailed once the token is committed: a link to a token that never was is no use.
        mail = reset.reset_mail(
            issued, link=reset.reset_link(settings.frontend_url, issued.token), ttl_minutes=ttl
        )
        transaction.after_commit(session, lambda: context.mailer.send_later(mail))
    return MessageOut(message=FORGOT_ANSWER)


@router.post("/reset", response_model=MessageOut)
async def reset_password(
    body: ResetIn, context: Context, session: SessionDep, ip: ClientIp
) -> MessageOut:
    """Choose a new password with the token from the mail; every session of the account ends
    (sign in again). 400 naming `token` when it is invalid, expired or used."""
    await context.limiter.check_and_record(
        f"reset:ip:{ip}",
        context.settings.forgot_limit_per_ip * 3,
        "reset attempts from your address",
    )
    await reset.user_of_token(session, body.token)
    await transaction.end_before_slow_work(session)  # the slow hash holds no lock
    password_hash = await context.passwords.hash(body.password)
    await reset.reset_password(session, token=body.token, password_hash=password_hash)
    return MessageOut(message="Your password was changed: sign in with it. Every session ended.")
