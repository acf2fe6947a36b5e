"""Every model, imported once so the metadata knows all tables (migrations, tests)."""

from sora2.api.audit.models import AuditEntry
from sora2.api.auth.models import AuthSession, RefreshToken
from sora2.api.auth.ratelimit import RateLimitCounter
from sora2.api.auth.reset_models import PasswordResetToken
from sora2.api.credits.models import CreditTransaction
from sora2.api.idempotency.models import IdempotencyRecord
from sora2.api.jobs.models import Job, UpstreamStop, WorkerBeat
from sora2.api.shares.models import VideoShare
from sora2.api.users.models import User
from sora2.api.videos.models import Video

__all__ = [
    "AuditEntry",
    "AuthSession",
    "CreditTransaction",
    "IdempotencyRecord",
    "Job",
    "PasswordResetToken",
    "RateLimitCounter",
    "RefreshToken",
    "UpstreamStop",
    "User",
    "Video",
    "VideoShare",
    "WorkerBeat",
]
