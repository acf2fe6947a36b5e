"""`/api/health` (+ `/live`, `/ready`) and `/metrics`."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from sora2 import __version__
from sora2.api.context import ApiContext
from sora2.api.deps import Context
from sora2.api.jobs.models import Job, WorkerBeat

router = APIRouter(tags=["health"])
logger = logging.getLogger("sora2.api.health")

DATABASE_CHECK_TIMEOUT = 2.0
JOB_STATUSES = ("queued", "running", "done", "failed")


async def _database_check(context: ApiContext) -> str:
    try:
        async with asyncio.timeout(DATABASE_CHECK_TIMEOUT):
            await context.database.ping()
    except Exception as error:  # any failure means "not ok"; the kind goes to the log
        logger.warning("database check failed: %s", type(error).__name__)
        return "unreachable"
    return "ok"


async def _worker_check(context: ApiContext) -> dict[str, Any]:
    async with context.database.read_session() as session:
        last_seen: object = (
            await session.execute(select(func.max(WorkerBeat.last_seen_at)))
        ).scalar()
    if last_seen is None:
        return {"status": "none", "heartbeatAgeSeconds": None}
    if isinstance(last_seen, str):  # SQLite returns max() of a timestamp as text
        last_seen = datetime.fromisoformat(last_seen)
    assert isinstance(last_seen, datetime)
    if last_seen.tzinfo is None:
        last_seen = last_seen.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - last_seen).total_seconds()
    stale = age > 3 * context.settings.worker_lease_seconds
    return {"status": "stale" if stale else "ok", "heartbeatAgeSeconds": round(age, 1)}


def _provider_check(context: ApiContext) -> dict[str, Any]:
    if context.provider is None:
        return {"name": context.settings.video_provider, "status": "unavailable"}
    try:
        return {"name": context.provider.name, **context.provider.health()}
    except Exception as error:
        return {"name": context.provider.name, "status": "error", "error": type(error).__name__}


@router.get("/api/health")
async def health(context: Context) -> JSONResponse:
    """Database (503 when unreachable), worker heartbeat age, provider state."""
    checks: dict[str, Any] = {"database": await _database_check(context)}
    if checks["database"] == "ok":
        checks["worker"] = await _worker_check(context)
    checks["provider"] = _provider_check(context)
    if checks["database"] != "ok":
        status, code = "unavailable", 503
    elif checks["worker"]["status"] != "ok" or checks["provider"].get("status", "ok") != "ok":
        # Requests are served, but videos will not be made (no worker, every key resting or
        # refused): say so, without taking the api out of a load balancer.
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    body = {
        "status": status,
        "timestamp": datetime.now(UTC).isoformat(),
        "version": __version__,
        "checks": checks,
    }
    if code == 503:
        body |= {
            "error": "Service Unavailable",
            "message": "The database check failed: the api cannot serve requests.",
        }
    return JSONResponse(body, status_code=code)


@router.get("/api/health/live")
async def live() -> dict[str, str]:
    """The process answers (for orchestrators' liveness probes)."""
    return {"status": "ok"}


@router.get("/api/health/ready")
async def ready(context: Context) -> JSONResponse:
    """Ready to serve: the database answers."""
    database = await _database_check(context)
    code = 200 if database == "ok" else 503
    return JSONResponse(
        {"status": "ok" if code == 200 else "unavailable", "checks": {"database": database}},
        status_code=code,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(context: Context) -> Response:
    """Prometheus text: requests, queue depth by status, job durations, provider errors."""
    try:
        async with context.database.read_session() as session:
            rows = (
                await session.execute(select(Job.status, func.count()).group_by(Job.status))
            ).all()
        counts = {str(status): int(count) for status, count in rows}
        for status in JOB_STATUSES:
            context.metrics.queue_depth.labels(status).set(counts.get(status, 0))
    except Exception as error:  # metrics must answer even when the database does not
        logger.warning("queue depth unavailable: %s", type(error).__name__)
    return Response(context.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
