"""Prometheus figures for `/metrics`, on a registry per app (tests run several apps per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
