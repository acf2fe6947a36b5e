"""Video bodies: what may be asked for and what a video looks like.

Which models, lengths and sizes are allowed is the catalog's business (`sora2.catalog`): a body is
checked against it by `service.choose`, so a refusal can name what the chosen model allows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, computed_field

from sora2.api.schemas import Input, Output, Page
from sora2.catalog import PROMPT_MAX_CHARS

VideoStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class VideoCreate(Input):
    prompt: Annotated[str, Field(min_length=1, max_length=PROMPT_MAX_CHARS)] = Field(
        description=f"What to film: 1 to {PROMPT_MAX_CHARS} characters (surrounding spaces are "
        "trimmed)"
    )
    model: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="A model id from GET /api/models; the catalog's first by default"
    )
    seconds: Annotated[int, Field(ge=1, le=3600)] | None = Field(
        None, description="One of the model's lengths; its first by default"
    )
    size: Annotated[str, Field(max_length=32)] | None = Field(
        None, description="One of the model's sizes (WIDTHxHEIGHT); its first by default"
    )


class RemixCreate(Input):
    prompt: Annotated[str, Field(min_length=1, max_length=PROMPT_MAX_CHARS)] = Field(
        description="The new words: what should change in the video"
    )


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
    remix_of: str | None = Field(None, description="The video this one remixes, if any")
    input_reference_key: str | None = Field(None, exclude=True)
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
    def input_reference_url(self) -> str | None:
        """The image it started from, when it did (image-to-video)."""
        if self.input_reference_key is None:
            return None
        return f"/api/videos/{self.id}/input_reference"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def thumbnail_url(self) -> str | None:
        return f"/api/videos/{self.id}/thumbnail" if self.status == "completed" else None


class VideoCreated(VideoOut):
    balance: int = Field(description="Your credits after this charge")


class VideoPage(Page):
    items: list[VideoOut]
