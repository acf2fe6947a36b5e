"""Video bodies: what may be asked for (DESIGN's enumerations) and what a video looks like."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, computed_field

from sora2.api.schemas import Input, Output, Page

Model = Literal["sora-2", "sora-2-pro"]
Seconds = Literal[4, 8, 12]
Size = Literal["1280x720", "720x1280", "1024x1792", "1792x1024"]
VideoStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
MAX_PROMPT = 2000


class VideoCreate(Input):
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT)] = Field(
        description="What to film: 1 to 2000 characters (surrounding spaces are trimmed)"
    )
    model: Model = "sora-2"
    seconds: Seconds = 4
    size: Size = "1280x720"


class VideoOut(Output):
    id: str
    prompt: str
    model: str
    seconds: int
    size: str
    status: VideoStatus
    progress: int
    cost: int
    error_code: str | None
    error_message: str | None
    video_bytes: int | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def content_url(self) -> str | None:
        return f"/api/videos/{self.id}/content" if self.status == "completed" else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def thumbnail_url(self) -> str | None:
        return f"/api/videos/{self.id}/thumbnail" if self.status == "completed" else None


class VideoCreated(VideoOut):
    balance: int = Field(description="Your credits after this charge")


class VideoPage(Page):
    items: list[VideoOut]
