"""The `videos` table: what was asked, what it cost, where it is, where its files are."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sora2.api.db.base import Base, UTCDateTime, new_id, utcnow
from sora2.api.users import models as _users_models  # noqa: F401 - the tables its keys name

ACTIVE_STATUSES = ("queued", "in_progress")
FINAL_STATUSES = ("completed", "failed", "cancelled")


class Video(Base):
    __tablename__ = "videos"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'in_progress', 'completed', 'failed', 'cancelled')",
            name="status_known",
        ),
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
        CheckConstraint("cost >= 0", name="cost_not_negative"),
        Index("ix_videos_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(32))
    seconds: Mapped[int] = mapped_column(Integer)
    size: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(String(500), default=None)
    provider: Mapped[str | None] = mapped_column(String(32), default=None)
    provider_job_id: Mapped[str | None] = mapped_column(String(128), default=None)
    video_key: Mapped[str | None] = mapped_column(String(255), default=None)
    thumbnail_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # The image a video started from (image-to-video), fitted to its size, in storage.
    input_reference_key: Mapped[str | None] = mapped_column(String(255), default=None)
    remix_of: Mapped[str | None] = mapped_column(String(36), default=None)  # the source video's id
    video_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
