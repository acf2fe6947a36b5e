"""Admin request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from sora2.api.schemas import Input, Output, Page
from sora2.api.users.schemas import UserOut
from sora2.api.videos.schemas import VideoOut

Reason = Annotated[str, Field(min_length=1, max_length=200)]


class UserPage(Page):
    items: list[UserOut]


class CreditAdjustment(Input):
    amount: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = Field(
        description="Credits to add (negative to remove); the balance never goes below zero"
    )
    reason: Reason = Field(description="Why (1 to 200 characters); the user sees it in the ledger")


class StatusChange(Input):
    status: Literal["active", "banned"]
    reason: Annotated[str | None, Field(max_length=200)] = Field(
        None, description="Why (kept in the audit log)"
    )


class ReasonIn(Input):
    reason: Annotated[str | None, Field(max_length=200)] = Field(
        None, description="Why (kept in the audit log)"
    )


class AdminVideoOut(VideoOut):
    user_id: str
    user_email: str | None = None


class AdminVideoPage(Page):
    items: list[AdminVideoOut]


class JobOut(Output):
    id: int
    video_id: str
    status: str
    attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    user_id: str | None = None
    user_email: str | None = None
    video_status: str | None = None
    video_error: str | None = None


class JobPage(Page):
    items: list[JobOut]


class AuditOut(Output):
    id: int
    created_at: datetime
    actor: str
    actor_id: str | None
    action: str
    target_type: str
    target_id: str
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str


class AuditPage(Page):
    items: list[AuditOut]


class ProviderKeyOut(Output):
    key: str = Field(description="Masked: a prefix and the last four characters at most")
    state: Literal["ok", "resting", "disabled", "unknown"]
    resting_until: datetime | None = None
    reason: str | None = None
    successes: int | None = None
    rate_limits: int | None = None


class ProviderOut(Output):
    name: str
    status: str
    keys: list[ProviderKeyOut]


class StatsOut(Output):
    generated_at: datetime
    users: dict[str, int]
    videos: dict[str, int]
    videos_today: dict[str, int]
    credits: dict[str, int]
    credits_today: dict[str, int]
    queue: dict[str, Any]
    workers: list[dict[str, Any]]
    provider: ProviderOut


class DailyOut(Output):
    days: list[str]
    videos: dict[str, list[int]]
    credits_spent: list[int]
    credits_refunded: list[int]
    queue_wait_seconds: list[float | None]
    charts: dict[str, str] = Field(description="Inline SVG, one per chart, drawn by the server")


class ConfigOut(Output):
    settings: dict[str, Any] = Field(description="Every setting; secrets masked")
