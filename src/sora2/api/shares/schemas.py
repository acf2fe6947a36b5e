"""Share link bodies."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from sora2.api.schemas import Output


class ShareCreated(Output):
    url: str = Field(description="{FRONTEND_URL}/s/{token}: shown this once, never again")
    token: str
    video_id: str
    created_at: datetime


class ShareState(Output):
    shared: bool
    created_at: datetime | None = Field(description="When the live link was made")


class SharedVideo(Output):
    """What anyone with the link sees: the video, nothing of its owner."""

    prompt: str
    model: str
    seconds: int
    size: str
    created_at: datetime
    content_url: str
    thumbnail_url: str
