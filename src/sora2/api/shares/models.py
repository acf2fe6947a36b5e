"""The `video_shares` table. Only a hash of each token is kept, so a database dump opens nothing;
a row goes with its video (ON DELETE CASCADE), so deleting a video revokes its links."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from sora2.api.db.base import Base, UTCDateTime, new_id, utcnow
from sora2.api.videos import models as _videos_models  # noqa: F401 - the tables its keys name


class VideoShare(Base):
    __tablename__ = "video_shares"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
