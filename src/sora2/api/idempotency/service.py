"""`Idempotency-Key` on the POSTs that charge credits: a repeat gets the first answer, once.

A browser that resubmits, a client whose connection dropped before the answer, and the web's
proxy retrying a reset POST that carries the header all send the same request again. The key's
row is inserted in the same transaction as the work it protects, *before* that work:

- a repeat after the first one committed finds the row and replays its answer (same status and
  body, plus `Idempotent-Replayed: true`), with no second charge;
- a repeat racing the first one waits on the row's primary key (PostgreSQL) or the single writer
  (SQLite), then finds the committed row and replays it;
- if the first one failed (402, say), its transaction rolled the row back with everything else,
  so the repeat is simply tried again;
- the same key on a different request (another body or path) is a 422, never a wrong replay.

Keys are per user and kept for `RETENTION`, the window a retrying client needs (as Stripe does).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.db.base import utcnow
from sora2.api.errors import ApiError
from sora2.api.idempotency.models import KEY_MAX_LENGTH, IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RETENTION = timedelta(hours=24)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description=(
            "Optional, 1 to 255 visible ASCII characters, unique per request you mean (a UUID is "
            "ideal). Sending the same request again with the same key, within 24 hours, answers "
            "what the first one did and charges nothing more."
        ),
    ),
]


def fingerprint(method: str, path: str, body: BaseModel | None = None) -> str:
    """What makes two requests "the same": method, path and the validated body, canonically."""
    payload = body.model_dump(mode="json") if body is not None else None
    canonical = json.dumps([method, path, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_valid_key(key: str) -> bool:
    """1 to KEY_MAX_LENGTH visible ASCII characters."""
    return 1 <= len(key) <= KEY_MAX_LENGTH and all("!" <= ch <= "~" for ch in key)


def _checked_key(key: str) -> str:
    if not is_valid_key(key):
        raise ApiError(
            400,
            "Bad Request",
            f"The {HEADER} header must be 1 to {KEY_MAX_LENGTH} visible ASCII characters with no "
            "spaces; send a fresh UUID for each new request.",
            details={"header": HEADER},
        )
    return key


@dataclass
class IdempotentRequest:
    """One request's claim on its key, within the caller's transaction."""

    session: AsyncSession
    user_id: str
    key: str
    fingerprint: str
    _record: IdempotencyRecord | None = None

    @classmethod
    def of(
        cls,
        session: AsyncSession,
        *,
        user_id: str,
        key: str | None,
        method: str,
        path: str,
        body: BaseModel | None = None,
    ) -> IdempotentRequest | None:
        """None when the client sent no key (the request is then not deduplicated)."""
        if key is None:
            return None
        return cls(session, user_id, _checked_key(key), fingerprint(method, path, body))

    async def claim(self) -> JSONResponse | None:
        """Claims the key for this request, or returns the answer of the request that has it.
        (Once claimed, claiming again is a no-op.)"""
        if self._record is not None:
            return None
        if (replay := await self._replay()) is not None:
            return replay
        await self._forget_expired()
        record = IdempotencyRecord(user_id=self.user_id, key=self.key, fingerprint=self.fingerprint)
        try:
            # In a savepoint: losing the race undoes this insert only, and the caller's
            # transaction (owned by the request) goes on to replay the winner's answer.
            async with self.session.begin_nested():
                self.session.add(record)  # flushed here: waits for a racer holding the key
        except IntegrityError:
            if (replay := await self._replay()) is not None:
                return replay
            raise
        self._record = record
        return None

    def complete(self, status_code: int, body: dict[str, Any]) -> None:
        """Keeps the answer, committed by the caller together with the work it describes."""
        assert self._record is not None, "claim() first"
        self._record.status_code = status_code
        self._record.response = body

    async def _replay(self) -> JSONResponse | None:
        record = await self.session.get(
            IdempotencyRecord, (self.user_id, self.key), populate_existing=True
        )
        if record is None or record.status_code is None or record.created_at < utcnow() - RETENTION:
            return None
        if record.fingerprint != self.fingerprint:
            raise ApiError(
                422,
                "Unprocessable Content",
                f"This {HEADER} was already used for a different request; use a new key for a "
                "new request, and the same key only to repeat the very same one.",
                details={"header": HEADER},
            )
        return JSONResponse(
            record.response, status_code=record.status_code, headers={REPLAYED_HEADER: "true"}
        )

    async def _forget_expired(self) -> None:
        """Old keys of this user go when they make a new one: the table stays small without a
        sweeper, and an expired key can be used afresh."""
        await self.session.execute(
            delete(IdempotencyRecord)
            .where(
                IdempotencyRecord.user_id == self.user_id,
                IdempotencyRecord.created_at < utcnow() - RETENTION,
            )
            .execution_options(synchronize_session=False)
        )
