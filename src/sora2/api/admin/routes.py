"""`/api/admin`: users (search, page), credit adjustments (ledgered), ban and unban."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy import func, or_, select

from sora2.api.auth.models import AuthSession
from sora2.api.credits.service import apply_change
from sora2.api.db.base import utcnow
from sora2.api.deps import AdminUser, SessionDep
from sora2.api.errors import ERROR_RESPONSES, ApiError, not_found
from sora2.api.schemas import Input, Page, PageNumber, PageSize
from sora2.api.users.models import User
from sora2.api.users.schemas import UserOut

router = APIRouter(prefix="/api/admin", tags=["admin"], responses=ERROR_RESPONSES)


class UserPage(Page):
    items: list[UserOut]


class CreditAdjustment(Input):
    amount: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = Field(
        description="Credits to add (negative to remove); the balance never goes below zero"
    )
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class StatusChange(Input):
    status: Literal["active", "banned"]


@router.get("/users", response_model=UserPage)
async def list_users(
    _admin: AdminUser,
    session: SessionDep,
    search: Annotated[
        str | None, Query(max_length=100, description="part of an email or nickname")
    ] = None,
    page: PageNumber = 1,
    limit: PageSize = 20,
) -> UserPage:
    where = []
    if search:
        pattern = f"%{search.strip().lower()}%"
        where.append(or_(User.email.like(pattern), func.lower(User.nickname).like(pattern)))
    total = (
        await session.execute(select(func.count()).select_from(User).where(*where))
    ).scalar_one()
    rows = (
        await session.execute(
            select(User)
            .where(*where)
            .order_by(User.created_at.desc())
            .offset((page - 1) * limit)
            .limit(limit)
        )
    ).scalars()
    return UserPage(
        items=[UserOut.model_validate(u) for u in rows], page=page, limit=limit, total=int(total)
    )


async def _user(session: SessionDep, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise not_found("This user")
    return user


@router.post(
    "/users/{user_id}/credits", response_model=UserOut, responses={409: ERROR_RESPONSES[400]}
)
async def adjust_credits(
    user_id: str, body: CreditAdjustment, admin: AdminUser, session: SessionDep
) -> UserOut:
    """Add or remove credits with a ledger entry of type `admin` (one transaction)."""
    user = await _user(session, user_id)
    balance = await apply_change(
        session,
        user_id=user.id,
        amount=body.amount,
        kind="admin",
        description=f"{body.reason} (by {admin.email})",
    )
    if balance is None:
        raise ApiError(
            409,
            "Conflict",
            f"Removing {-body.amount} credits would leave a negative balance "
            f"(balance {user.credits}).",
            details={"balance": user.credits},
        )
    await session.commit()
    await session.refresh(user)
    return UserOut.model_validate(user)


@router.put("/users/{user_id}/status", response_model=UserOut)
async def change_status(
    user_id: str, body: StatusChange, admin: AdminUser, session: SessionDep
) -> UserOut:
    """Ban (ends every session of the account) or reinstate a user."""
    user = await _user(session, user_id)
    if user.id == admin.id:
        raise ApiError(400, "Bad Request", "You cannot change the status of your own account.")
    user.status = body.status
    if body.status == "banned":
        sessions = (
            await session.execute(select(AuthSession).where(AuthSession.user_id == user.id))
        ).scalars()
        for item in sessions:
            item.revoked_at = item.revoked_at or utcnow()
    await session.commit()
    return UserOut.model_validate(user)
