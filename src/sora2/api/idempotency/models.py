"""One row per (user, Idempotency-Key): what the request was, and what it was answered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sora2.api.db.base import Base, UTCDateTime, utcnow
from sora2.api.users import models as _users_models  # noqa: F401 - the table its key names

KEY_MAX_LENGTH = 255


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    # sha256 of the method, the path and the validated body: a key reused for another request
    # is an error, never a replay of the wrong answer.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # Null only inside the transaction that claimed the key; others never see it so.
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
