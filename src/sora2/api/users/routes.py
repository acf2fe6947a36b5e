"""`/api/users`: your profile and your password."""

from __future__ import annotations

from fastapi import APIRouter

from sora2.api.auth import service as auth_service
from sora2.api.auth.schemas import MessageOut
from sora2.api.db import transaction
from sora2.api.deps import Context, CurrentSession, CurrentUser, SessionDep
from sora2.api.errors import ERROR_RESPONSES, ApiError
from sora2.api.users.schemas import PasswordChange, ProfileUpdate, UserOut

router = APIRouter(prefix="/api/users", tags=["users"], responses=ERROR_RESPONSES)


@router.get("/profile", response_model=UserOut)
async def profile(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.put("/profile", response_model=UserOut)
async def update_profile(body: ProfileUpdate, user: CurrentUser, session: SessionDep) -> UserOut:
    """Change your nickname."""
    user.nickname = body.nickname
    return UserOut.model_validate(user)


@router.put("/password", response_model=MessageOut)
async def change_password(
    body: PasswordChange, current: CurrentSession, context: Context, session: SessionDep
) -> MessageOut:
    """Change your password; every other signed-in session ends, this one stays."""
    user, session_id = current
    await transaction.end_before_slow_work(session)  # the slow hashes hold no lock
    if not await context.passwords.verify(body.current_password, user.password_hash):
        raise ApiError(
            400,
            "Bad Request",
            "currentPassword is wrong: enter the password you signed in with.",
            details={"fields": [{"field": "currentPassword", "message": "is wrong"}]},
        )
    user.password_hash = await context.passwords.hash(body.new_password)
    await auth_service.revoke_other_sessions(session, user_id=user.id, keep=session_id)
    return MessageOut(message="Password changed; your other sessions were signed out.")
