"""The caller's ledger read with the driver (`sora2.api.db.rows`), for the hot routes."""

from __future__ import annotations

from typing import Any

from sora2.api.auth.reads import SIGNED_IN, SIGNED_IN_FROM
from sora2.api.db.rows import Row, Statement, utc

# How many ledger rows the caller has (no row: the session is not live), and one page of them.
TRANSACTION_COUNT = Statement(
    "SELECT (SELECT count(*) FROM credit_transactions t WHERE t.user_id = :user_id) "
    f"FROM {SIGNED_IN_FROM} WHERE {SIGNED_IN}"
)
TRANSACTION_PAGE = Statement(
    "SELECT t.id, t.amount, t.balance_after, t.type, t.video_id, t.description, t.created_at "
    "FROM credit_transactions t WHERE t.user_id = :user_id "
    "ORDER BY t.id DESC LIMIT :limit OFFSET :offset"
)


def transaction_json(row: Row) -> dict[str, Any]:
    """A `TRANSACTION_PAGE` row as `TransactionOut` serialises it."""
    transaction_id, amount, balance_after, kind, video_id, description, created_at = row
    return {
        "id": transaction_id,
        "amount": amount,
        "balanceAfter": balance_after,
        "type": kind,
        "videoId": video_id,
        "description": description,
        "createdAt": utc(created_at),
    }
