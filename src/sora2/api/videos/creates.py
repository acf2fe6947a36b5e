"""A create's usual case written with the driver (`Rows.guarded_write`), for the hot routes.

The same rows as `service.create` writes through the ORM, in one transaction: the charge (a
conditional UPDATE that is also the guard: no row, nothing written), the video, its ledger row
and its job, and with an `Idempotency-Key` the key's record holding the answer (as
`IdempotentRequest` keeps it, so a repeat replays it). `created_json` is what `VideoCreated`
answers for them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from sora2.api.db.base import utcnow
from sora2.api.db.rows import Row, Rows, Statement, Step
from sora2.api.idempotency.service import RETENTION
from sora2.api.videos.service import Choice

CHARGE = Statement(
    "UPDATE users SET credits = credits - :cost, updated_at = :now "
    "WHERE id = :user_id AND credits >= :cost RETURNING credits"
)
INSERT_VIDEO = Statement(
    "INSERT INTO videos (id, user_id, prompt, model, seconds, size, status, progress, cost, "
    "provider, created_at, updated_at) VALUES (:video_id, :user_id, :prompt, :model, :seconds, "
    ":size, 'queued', 0, :cost, :provider, :now, :now)"
)
INSERT_LEDGER_ROW = Statement(
    "INSERT INTO credit_transactions (user_id, amount, balance_after, type, video_id, "
    "description, created_at) VALUES (:user_id, :amount, "
    # (The cast: PostgreSQL would otherwise deduce text here and varchar above for one parameter.)
    "(SELECT credits FROM users WHERE id = CAST(:user_id AS VARCHAR)), 'consume', :video_id, "
    ":description, :now)"
)
INSERT_JOB = Statement(
    "INSERT INTO jobs (video_id, status, attempts, run_after, created_at, updated_at) "
    "VALUES (:video_id, 'queued', 0, :now, :now, :now)"
)


FORGET_EXPIRED_KEYS = Statement(
    "DELETE FROM idempotency_keys WHERE user_id = :user_id AND created_at < :keys_expired"
)
INSERT_KEY = Statement(
    "INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response, created_at) "
    "VALUES (:user_id, :key, :fingerprint, 202, :response, :now)"
)


@dataclass(frozen=True, slots=True)
class Key:
    """An `Idempotency-Key` and the fingerprint of the request it names."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Created:
    video_id: str
    prompt: str
    choice: Choice
    at: datetime
    balance: int


async def charge_and_queue(
    rows: Rows, *, user_id: str, prompt: str, choice: Choice, key: Key | None
) -> Created | None:
    """Charges, inserts the video, its ledger row and its job (and the key's record); None
    (nothing written) when the balance is below the cost. A key that another request claimed
    meanwhile fails the insert, and nothing is written."""
    now = utcnow()
    model = choice.model
    params = {
        "video_id": str(uuid.uuid4()),
        "user_id": user_id,
        "prompt": prompt,
        "model": model.id,
        "seconds": choice.seconds,
        "size": choice.size,
        "cost": choice.cost,
        "amount": -choice.cost,
        "provider": model.provider,
        "description": f"{model.id}, {choice.seconds} s, {choice.size}",
        "now": rows.timestamp(now),
    }
    video = Created(params["video_id"], prompt, choice, now, balance=0)

    def then(charged: Row) -> list[Step]:
        steps: list[Step] = [
            (INSERT_VIDEO, params),
            (INSERT_LEDGER_ROW, params),
            (INSERT_JOB, params),
        ]
        if key is None:
            return steps
        answer = orjson.dumps(created_json(replace(video, balance=int(charged[0]))), option=UTC_Z)
        remembered = params | {
            "key": key.key,
            "fingerprint": key.fingerprint,
            "response": answer.decode(),
            "keys_expired": rows.timestamp(now - RETENTION),
        }
        return [(FORGET_EXPIRED_KEYS, remembered), *steps, (INSERT_KEY, remembered)]

    row: Row | None = await rows.guarded_write((CHARGE, params), then)
    return None if row is None else replace(video, balance=int(row[0]))


# pydantic's rendering of an aware UTC datetime ends in "Z"; orjson's does with this option.
UTC_Z = orjson.OPT_UTC_Z


def created_json(created: Created) -> dict[str, Any]:
    """What `VideoCreated` answers for a video just queued."""
    choice = created.choice
    return {
        "id": created.video_id,
        "prompt": created.prompt,
        "model": choice.model.id,
        "seconds": choice.seconds,
        "size": choice.size,
        "status": "queued",
        "progress": 0,
        "cost": choice.cost,
        "errorCode": None,
        "errorMessage": None,
        "videoBytes": None,
        "remixOf": None,
        "createdAt": created.at,
        "updatedAt": created.at,
        "startedAt": None,
        "finishedAt": None,
        "balance": created.balance,
        "contentUrl": None,
        "inputReferenceUrl": None,
        "thumbnailUrl": None,
    }
