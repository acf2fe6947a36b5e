"""The ledger: one row per balance change, with the balance it left."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sora2.api.db.base import Base, UTCDateTime, utcnow
from sora2.api.users import models as _users_models  # noqa: F401 - the tables its keys name
from sora2.api.videos import models as _videos_models  # noqa: F401 - the tables its keys name

TRANSACTION_TYPES = ("gift", "consume", "refund", "admin")


class CreditTransaction(Base):
    __tablename__ = "credit_transactions"
    __table_args__ = (
        CheckConstraint("type IN ('gift', 'consume', 'refund', 'admin')", name="type_known"),
        CheckConstraint("balance_after >= 0", name="balance_not_negative"),
        Index("ix_credit_transactions_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(16))
    video_id: Mapped[str | None] = mapped_column(
        ForeignKey("videos.id", ondelete="SET NULL"), default=None
    )
    description: Mapped[str] = mapped_column(String(200), default="")
    # The administrator behind an `admin` change: its own column, so the reason keeps all of its
    # 200 characters, and the admin's email never reaches the user's ledger.
    actor_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
