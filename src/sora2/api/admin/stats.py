"""The figures of the admin dashboard: totals, today's numbers, and 30 days of daily series.

Daily series are bucketed in Python over the window's rows (a few columns each), because the two
databases disagree on dates of timestamps (SQLite keeps text, PostgreSQL converts to the session's
time zone); days are UTC days.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.credits.models import CreditTransaction
from sora2.api.db.base import utcnow
from sora2.api.jobs.models import Job, WorkerBeat
from sora2.api.users.models import User
from sora2.api.videos.models import Video

VIDEO_STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")


def _aware(value: Any) -> datetime | None:
    """SQLite answers min()/max() of a timestamp as naive text; make it an aware datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def start_of_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def _credit_totals(session: AsyncSession, since: datetime | None) -> dict[str, int]:
    amount = CreditTransaction.amount
    kind = CreditTransaction.type
    issued = case((((kind == "gift") | (kind == "admin")) & (amount > 0), amount), else_=0)
    removed = case(((kind == "admin") & (amount < 0), -amount), else_=0)
    spent = case((kind == "consume", -amount), else_=0)
    refunded = case((kind == "refund", amount), else_=0)
    query = select(func.sum(issued), func.sum(removed), func.sum(spent), func.sum(refunded))
    if since is not None:
        query = query.where(CreditTransaction.created_at >= since)
    row = (await session.execute(query)).one()
    return {
        "issued": int(row[0] or 0),
        "removedByAdmins": int(row[1] or 0),
        "spent": int(row[2] or 0),
        "refunded": int(row[3] or 0),
    }


async def _videos_by_status(session: AsyncSession, since: datetime | None) -> dict[str, int]:
    query = select(Video.status, func.count()).group_by(Video.status)
    if since is not None:
        query = query.where(Video.created_at >= since)
    counts = dict((await session.execute(query)).all())
    return {status: int(counts.get(status, 0)) for status in VIDEO_STATUSES}


async def _queue(session: AsyncSession, now: datetime) -> dict[str, Any]:
    row = (
        await session.execute(
            select(
                func.count().filter(Job.status == "queued"),
                func.count().filter(Job.status == "running"),
                func.min(Job.created_at).filter(Job.status == "queued"),
            )
        )
    ).one()
    oldest = _aware(row[2])
    return {
        "depth": int(row[0]),
        "running": int(row[1]),
        "oldestWaitSeconds": round((now - oldest).total_seconds(), 1) if oldest else None,
    }


async def _workers(session: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    beats = (
        await session.execute(select(WorkerBeat).order_by(WorkerBeat.last_seen_at.desc()))
    ).scalars()
    return [
        {
            "id": beat.id,
            "hostname": beat.hostname,
            "pid": beat.pid,
            "startedAt": beat.started_at,
            "lastSeenAt": beat.last_seen_at,
            "secondsSinceBeat": round((now - beat.last_seen_at).total_seconds(), 1),
        }
        for beat in beats
    ]


async def _users(session: AsyncSession, today: datetime) -> dict[str, int]:
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(User.status == "banned"),
                func.count().filter(User.role == "admin"),
                func.count().filter(User.created_at >= today),
            )
        )
    ).one()
    return {"total": row[0], "banned": row[1], "admins": row[2], "newToday": row[3]}


async def overview(session: AsyncSession) -> dict[str, Any]:
    """Totals since the start, and the same for today (UTC)."""
    now = utcnow()
    today = start_of_day(now)
    return {
        "generatedAt": now,
        "users": await _users(session, today),
        "videos": await _videos_by_status(session, None),
        "videosToday": await _videos_by_status(session, today),
        "credits": await _credit_totals(session, None),
        "creditsToday": await _credit_totals(session, today),
        "queue": await _queue(session, now),
        "workers": await _workers(session, now),
    }


@dataclass(frozen=True, slots=True)
class DailySeries:
    days: list[date]
    videos: dict[str, list[int]]
    credits_spent: list[int]
    credits_refunded: list[int]
    queue_wait_seconds: list[float | None]
    """Mean time from create to start of the videos started that day; None without any."""


async def daily(session: AsyncSession, *, days: int) -> DailySeries:
    today = start_of_day(utcnow())
    first = today - timedelta(days=days - 1)
    calendar = [(first + timedelta(days=n)).date() for n in range(days)]
    index = {day: n for n, day in enumerate(calendar)}

    videos = {status: [0] * days for status in VIDEO_STATUSES}
    rows = await session.execute(
        select(Video.created_at, Video.status).where(Video.created_at >= first)
    )
    for created_at, status in rows:
        slot = index.get(created_at.astimezone(UTC).date())
        if slot is not None and status in videos:
            videos[status][slot] += 1

    spent, refunded = [0] * days, [0] * days
    ledger = await session.execute(
        select(
            CreditTransaction.created_at, CreditTransaction.type, CreditTransaction.amount
        ).where(
            CreditTransaction.created_at >= first,
            CreditTransaction.type.in_(("consume", "refund")),
        )
    )
    for created_at, kind, amount in ledger:
        slot = index.get(created_at.astimezone(UTC).date())
        if slot is None:
            continue
        if kind == "consume":
            spent[slot] += -amount
        else:
            refunded[slot] += amount

    waits: dict[int, list[float]] = defaultdict(list)
    started = await session.execute(
        select(Video.created_at, Video.started_at).where(Video.started_at >= first)
    )
    for created_at, started_at in started:
        if started_at is None:
            continue
        slot = index.get(started_at.astimezone(UTC).date())
        if slot is not None:
            waits[slot].append(max(0.0, (started_at - created_at).total_seconds()))
    queue_wait = [
        round(sum(waits[n]) / len(waits[n]), 1) if waits[n] else None for n in range(days)
    ]
    return DailySeries(calendar, videos, spent, refunded, queue_wait)
