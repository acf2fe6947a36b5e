"""Credit response bodies."""

from __future__ import annotations

from datetime import datetime

from sora2.api.schemas import Output, Page


class BalanceOut(Output):
    balance: int
    prices: dict[str, int]


class TransactionOut(Output):
    id: int
    amount: int
    balance_after: int
    type: str
    video_id: str | None
    description: str
    created_at: datetime


class TransactionPage(Page):
    items: list[TransactionOut]
