"""What one proxy needs to know, as small value objects (as httpx's `Timeout` and `Limits` and
aiohttp's `ClientTimeout` are): built directly by a library user, or by the application from its
settings. Nothing here reads the environment."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from sora2.proxy._errors import Failure

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CORS_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "authorization",
        "cache-control",
        "content-language",
        "content-type",
        "idempotency-key",
        "last-event-id",
        "x-request-id",
        "x-requested-with",
    }
)

# Query parameters whose values may appear in log lines; every other value is written `***`.
# An allowlist: a new parameter carrying a token or an e-mail address is hidden until someone
# decides it is harmless.
DEFAULT_LOGGABLE_QUERY_NAMES = frozenset(
    {
        "after",
        "before",
        "cursor",
        "direction",
        "format",
        "include",
        "limit",
        "offset",
        "order",
        "page",
        "per_page",
        "size",
        "sort",
        "status",
    }
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    request: float = 30.0
    """The deadline for the response headers, every attempt and wait included. It starts once
    the request body is in hand (small bodies) or has been sent (streamed ones)."""
    connect: float = 1.0
    """One TCP connect to the backend, and nothing else."""
    idle: float = 30.0
    """The longest silence on any side: the backend before its headers or mid-body, a client
    sending its body (408) or not reading its response (the response is cut off)."""


@dataclass(frozen=True, slots=True)
class PoolLimits:
    size: int = 8_192
    """Backend connections requests may hold at once (each open stream holds one). Beyond it a
    request waits for one, within its deadline, and then gets 503 "Proxy At Capacity": the
    proxy's own congestion, never counted against the backend. Each costs two open files."""
    keepalive: float = 4.0
    """Seconds an idle pooled connection is kept; 0 disables reuse (a connection per request).
    Keep it below the backend's own keep-alive timeout, or a reused connection may be closed
    under a request that then cannot safely be retried."""


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    """Consecutive failed requests (the backend unreachable, resetting or silent) that open it."""
    open_time: float = 0.5
    """How long an open circuit fails fast before letting one probe through."""
    probe_timeout: float = 1.0
    """How long a half-open probe may hold the others back before another request probes."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    """Attempts in all, the first included, when retrying is safe."""
    delay: float = 0.1
    """Base of the backoff: attempt n waits uniformly in [0, delay · 2^(n-1)]."""
    budget_ratio: float = 0.2
    """Retrying requests may be at most this share of requests in flight..."""
    budget_min: int = 3
    """...and never fewer than this."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    path: str = "/api/health"
    """Checked on the backend; any answer below 500 means alive."""
    ttl: float = 5.0
    """How long a verdict is trusted; checks run every ttl/2 while up, 4 a second while down."""
    startup_grace: float = 10.0
    """Seconds after the proxy starts during which a backend it has never seen up is taken to be
    starting: GETs that meet a refused connection wait for it (within their deadline). After
    that, a backend that never came up is simply down, and requests fail at once."""


@dataclass(frozen=True, slots=True)
class BalancePolicy:
    """How requests are spread over several backends, and when one is taken out of rotation.
    With a single backend none of it applies: it is never ejected, and requests fail fast as
    its own health and breaker say."""

    strategy: Literal["least_outstanding", "round_robin"] = "least_outstanding"
    """`least_outstanding`: the backend with the fewest requests in flight (round-robin among
    equals); `round_robin`: each in turn."""
    eject_after: int = 3
    """Consecutive failures (unreachable, reset, silent, or a 502/503/504 answer) that eject a
    backend: no new requests go to it until its health check passes again. Its breaker
    opening or its health check failing ejects it too. The last backend in rotation is never
    ejected this way."""
    eject_time: float = 1.0
    """The shortest ejection; it doubles with each ejection in a row (up to `max_eject_time`)
    and a backend returns at the first passing health check after it."""
    max_eject_time: float = 30.0
    try_timeout: float | None = None
    """How long one attempt of a request that may safely be retried waits for the response
    headers before the request moves to another backend (a hung backend must not hold it to
    the deadline). None: the request timeout divided by `RetryPolicy.max_attempts`."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    api_url: str
    """Where requests go: `{api_url}{upstream_prefix}/{path}`. Nothing else is ever reached."""
    api_urls: tuple[str, ...] = ()
    """Several backends to balance over (`api_url` is then ignored); empty: `api_url` alone."""
    balance: BalancePolicy = BalancePolicy()
    allowed_origins: frozenset[str] = frozenset()
    """Origins besides the page's own that get CORS with credentials and may write."""
    trusted_proxies: tuple[Network, ...] = ()
    """Peers whose `X-Forwarded-*` and `Forwarded` headers are believed; everyone else's are
    replaced."""
    cors_allowed_headers: frozenset[str] = DEFAULT_CORS_HEADERS
    """Request headers an allowed origin's preflight may ask to send."""
    timeouts: Timeouts = Timeouts()
    pool: PoolLimits = PoolLimits()
    breaker: BreakerPolicy = BreakerPolicy()
    retries: RetryPolicy = RetryPolicy()
    health: HealthPolicy = HealthPolicy()
    max_body_bytes: int = 52_428_800
    """Larger request bodies get 413, with or without a Content-Length."""
    upstream_prefix: str = "/api"
    expose_internals: bool = False
    """Error answers name the backend's address and the low-level cause (for development)."""
    suggestions: Mapping[Failure, str] = field(default_factory=dict)
    """The application's own advice per failure (which command starts the backend, which log
    to read); failures it leaves out get neutral defaults."""
    loggable_query_names: frozenset[str] = DEFAULT_LOGGABLE_QUERY_NAMES
    restart_signal: Callable[[], float] | None = None
    """Seconds for which the backend is known to be restarting on purpose (0 or less: it is
    not), asked only when it refuses a connection. While it is, requests wait for the new
    process (within their deadline) instead of failing, and fail-fast is held off; otherwise a
    refused connection is an outage and fails fast."""
    via: str = "1.1 sora2"

    @property
    def backend_urls(self) -> tuple[str, ...]:
        """Every backend, in the order configured."""
        return self.api_urls or (self.api_url,)

    @property
    def api_origin(self) -> str:
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc}"
