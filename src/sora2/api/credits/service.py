"""Balance changes: one conditional UPDATE plus one ledger row, inside the caller's transaction.

The UPDATE only matches when the balance stays ≥ 0, so concurrent charges can never overdraw
(the CHECK constraint is the last line of defence); the caller commits both writes together.
The ledger row is only added to the session: it is written with the caller's next flush or
commit, together with whatever else the caller adds (a flush costs about as much as a query).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from sora2.api.credits.models import CreditTransaction
from sora2.api.errors import ApiError
from sora2.api.users.models import User

# Built once with bound parameters: composing the statement costs more CPU than running it.
_CHANGE_BALANCE = (
    update(User)
    .where(User.id == bindparam("user_id"), User.credits + bindparam("amount") >= 0)
    .values(credits=User.credits + bindparam("amount"))
    .returning(User.credits)
    .execution_options(synchronize_session=False)
)


async def apply_change(
    session: AsyncSession,
    *,
    user_id: str,
    amount: int,
    kind: str,
    description: str,
    video_id: str | None = None,
    actor_id: str | None = None,
) -> int | None:
    """Adds `amount` (negative to charge); the new balance, or None if it would go below zero.

    `actor_id` names the administrator behind an `admin` change (never shown to the user)."""
    balance = (
        await session.execute(_CHANGE_BALANCE, {"user_id": user_id, "amount": amount})
    ).scalar_one_or_none()
    if balance is None:
        return None
    session.add(
        CreditTransaction(
            user_id=user_id,
            amount=amount,
            balance_after=balance,
            type=kind,
            video_id=video_id,
            description=description,
            actor_id=actor_id,
        )
    )
    return balance


async def charge(
    session: AsyncSession, *, user_id: str, cost: int, video_id: str, description: str
) -> int:
    """Takes `cost` credits or raises 402 naming the balance and the cost."""
    balance = await apply_change(
        session,
        user_id=user_id,
        amount=-cost,
        kind="consume",
        description=description,
        video_id=video_id,
    )
    if balance is None:
        raise insufficient_credits(cost, await get_balance(session, user_id=user_id))
    return balance


def insufficient_credits(cost: int, balance: int) -> ApiError:
    return ApiError(
        402,
        "Insufficient Credits",
        f"This video costs {cost} credits and your balance is {balance}.",
        details={"balance": balance, "cost": cost},
    )


async def refund(
    session: AsyncSession, *, user_id: str, amount: int, video_id: str, why: str
) -> None:
    if amount > 0:
        await apply_change(
            session,
            user_id=user_id,
            amount=amount,
            kind="refund",
            description=why,
            video_id=video_id,
        )


async def get_balance(session: AsyncSession, *, user_id: str) -> int:
    return int((await session.execute(select(User.credits).where(User.id == user_id))).scalar_one())


# Built once with bound parameters, run with Core on the read route's connection (see
# `sora2.api.deps`); rows come back as dicts, which pydantic validates fastest.
_OWN = CreditTransaction.user_id == bindparam("user_id")
_COUNT = select(func.count()).select_from(CreditTransaction).where(_OWN)
_PAGE = (
    select(*CreditTransaction.__table__.c)
    .where(_OWN)
    .order_by(CreditTransaction.id.desc())
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)


async def list_transactions(
    connection: AsyncConnection, *, user_id: str, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    params = {"user_id": user_id, "offset": (page - 1) * limit, "limit": limit}
    total = (await connection.execute(_COUNT, params)).scalar_one()
    rows = await connection.execute(_PAGE, params)
    return [row._asdict() for row in rows], int(total)
