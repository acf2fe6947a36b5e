"""`/api/credits`: balance (with the price table) and the ledger."""

from __future__ import annotations

from fastapi import APIRouter

from sora2.api.credits import service
from sora2.api.credits.schemas import BalanceOut, TransactionOut, TransactionPage
from sora2.api.deps import CallerDep, Context, ReadConnection
from sora2.api.errors import ERROR_RESPONSES
from sora2.api.schemas import PageNumber, PageSize

router = APIRouter(prefix="/api/credits", tags=["credits"], responses=ERROR_RESPONSES)


@router.get("/balance", response_model=BalanceOut)
async def balance(caller: CallerDep, context: Context) -> BalanceOut:
    """Your balance, and the price of a second of video by model."""
    return BalanceOut(balance=caller.credits, prices=context.catalog.prices())


@router.get("/transactions", response_model=TransactionPage)
async def transactions(
    caller: CallerDep,
    connection: ReadConnection,
    page: PageNumber = 1,
    limit: PageSize = 20,
) -> TransactionPage:
    """Every change to your balance, newest first."""
    rows, total = await service.list_transactions(
        connection, user_id=caller.id, page=page, limit=limit
    )
    return TransactionPage(
        items=[TransactionOut.model_validate(row) for row in rows],
        page=page,
        limit=limit,
        total=total,
    )
