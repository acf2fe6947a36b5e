"""Prometheus figures for `/metrics`, on a registry per app (tests run several apps per process)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import event

if TYPE_CHECKING:
    from sora2.api.db import Database

JOB_DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sora2_api_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "sora2_api_request_duration_seconds",
            "Time to answer a request (headers sent)",
            ["method"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sora2_jobs", "Jobs in the queue table, by status", ["status"], registry=self.registry
        )
        self.job_seconds = Histogram(
            "sora2_job_duration_seconds",
            "From claim to final state, for jobs this process ran, by outcome",
            ["outcome"],
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.provider_errors = Counter(
            "sora2_provider_errors",
            "Errors the video provider returned, by provider, kind and code",
            ["provider", "kind", "code"],
            registry=self.registry,
        )

        self.database_queries = Counter(
            "sora2_api_database_queries",
            "Statements this process sent to the database",
            registry=self.registry,
        )
        self.live_watchers = Gauge(
            "sora2_live_watchers",
            "Open /api/videos/{id}/events streams in this process",
            registry=self.registry,
        )
        self.live_polls = Counter(
            "sora2_live_polls",
            "Queries of the live-progress poller, by reason: interval (every watched video), "
            "change (videos announced as changed), access (the streams' sessions)",
            ["reason"],
            registry=self.registry,
        )
        self.live_notifications = Counter(
            "sora2_live_notifications",
            "Video changes announced by PostgreSQL NOTIFY (from any process)",
            registry=self.registry,
        )

    def count_statements(self, database: Database) -> None:
        """Counts every statement this process sends to `database` in `database_queries`."""
        for engine in {database.engine.sync_engine, database.read_engine.sync_engine}:
            event.listen(engine, "before_cursor_execute", self._count_statement)

    def _count_statement(self, *_args: Any) -> None:
        self.database_queries.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
