"""The web's proxy, configured from the settings: the one place where `sora2.proxy` (which knows
nothing of this application) meets the app's settings, its commands and its log files."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from sora2.proxy import (
    BalancePolicy,
    BreakerPolicy,
    Failure,
    HealthPolicy,
    PoolLimits,
    ProxyConfig,
    RetryPolicy,
    Timeouts,
)
from sora2.settings import Settings


def proxy_config(settings: Settings) -> ProxyConfig:
    connect = settings.proxy_connect_timeout_ms / 1000
    urls = settings.api_urls
    return ProxyConfig(
        api_url=urls[0],
        api_urls=tuple(urls) if len(urls) > 1 else (),
        allowed_origins=frozenset({settings.frontend_origin}),
        trusted_proxies=tuple(
            ipaddress.ip_network(item, strict=False) for item in settings.proxy_trusted_proxies
        ),
        timeouts=Timeouts(
            request=settings.proxy_request_timeout_ms / 1000,
            connect=connect,
            idle=settings.proxy_idle_timeout_ms / 1000,
        ),
        pool=PoolLimits(size=settings.proxy_pool_size),
        balance=BalancePolicy(strategy=settings.proxy_balance),
        breaker=BreakerPolicy(
            failure_threshold=settings.proxy_circuit_failure_threshold,
            open_time=settings.proxy_circuit_open_ms / 1000,
            probe_timeout=max(connect, 1.0),
        ),
        retries=RetryPolicy(
            max_attempts=settings.proxy_max_attempts,
            delay=settings.proxy_retry_delay_ms / 1000,
            budget_ratio=settings.proxy_retry_budget_ratio,
        ),
        health=HealthPolicy(
            ttl=settings.proxy_health_check_ttl_ms / 1000,
            startup_grace=settings.proxy_startup_grace_ms / 1000,
        ),
        max_body_bytes=settings.proxy_max_body_bytes,
        expose_internals=settings.is_development,
        suggestions=(
            development_suggestions(settings)
            if settings.is_development
            else operator_suggestions(settings)
        ),
        restart_signal=(
            None
            if settings.api_restart_signal is None
            else restart_window(settings.api_restart_signal)
        ),
    )


def restart_window(path: Path) -> Callable[[], float]:
    """Seconds the api is still expected to be restarting, as `sora2 dev` writes it: the file
    holds the epoch time the restart should be over by, and exists only while one is under way."""

    def seconds_left() -> float:
        try:
            until = float(path.read_text())
        except (OSError, ValueError):
            return 0.0
        return until - time.time()

    return seconds_left


def operator_suggestions(settings: Settings) -> dict[Failure, str]:
    """What whoever runs the service should check: settings by name, never an internal
    address, a log path or a command (an answer may reach anyone on the internet)."""
    del settings  # the same words whatever the values
    return {
        Failure.REFUSED: "The service is starting or down; try again shortly.",
        Failure.UNAVAILABLE: "The service is recovering; try again shortly.",
        Failure.TIMEOUT: "The service is busy; try again shortly.",
        Failure.BAD_GATEWAY: (
            "Try again; the request was not repeated automatically because that was not safe."
        ),
        Failure.TOO_LARGE: "Send a smaller body.",
        Failure.SATURATED: "The service is busy; try again shortly.",
    }


def development_suggestions(settings: Settings) -> dict[Failure, str]:
    """For the developer at this machine: the command to run, the log to read, the setting."""
    return {
        Failure.REFUSED: (
            "Start the backend: sora2 dev api (or make dev for everything)."
            + _localhost_hint(settings.api_url)
        ),
        Failure.UNAVAILABLE: (
            "Check logs/api.log or run sora2 doctor. If the api is stopped, start it: "
            "sora2 dev api. Traffic resumes within a second of the backend answering again."
        ),
        Failure.TIMEOUT: (
            "The api is overloaded or stuck: check logs/api.log. If this endpoint is slow by "
            "nature, raise PROXY_REQUEST_TIMEOUT_MS."
        ),
        Failure.BAD_GATEWAY: (
            "The api may have crashed or restarted mid-request: check logs/api.log. Retry the "
            "request; it was not repeated automatically because that was not safe."
        ),
        Failure.TOO_LARGE: "Send a smaller body, or raise PROXY_MAX_BODY_BYTES.",
        Failure.BODY_TIMEOUT: (
            "Send the whole body without pauses longer than PROXY_IDLE_TIMEOUT_MS "
            f"({settings.proxy_idle_timeout_ms} ms)."
        ),
        Failure.SATURATED: (
            "Retry shortly. If this lasts, raise PROXY_POOL_SIZE (and the open-file limit: "
            "sora2 doctor shows it)."
        ),
        Failure.BAD_PATH: (
            "Use a plain path under /api/proxy/ without '..', '//', backslashes, URL schemes "
            "or control characters."
        ),
        Failure.FORBIDDEN_ORIGIN: (
            "Call the API from the Sora2 web app, or add your origin to FRONTEND_URL."
        ),
    }


def _localhost_hint(api_url: str) -> str:
    if (urlsplit(api_url).hostname or "") == "localhost":
        return (
            " API_URL uses 'localhost', which may resolve to ::1 while the api listens on"
            " 127.0.0.1: set API_URL=http://127.0.0.1:3101."
        )
    return ""
