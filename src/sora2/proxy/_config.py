"""What one proxy needs to know: derived from `Settings`, or built directly by a library user."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sora2.settings import Settings

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


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    api_url: str
    """Where requests go: `{api_url}/api/{path}`. Nothing else is ever reached."""
    allowed_origins: frozenset[str] = frozenset()
    """Origins besides the page's own that get CORS with credentials and may write."""
    trusted_proxies: tuple[Network, ...] = ()
    """Peers whose `X-Forwarded-*` headers are believed; everyone else's are replaced."""
    cors_allowed_headers: frozenset[str] = DEFAULT_CORS_HEADERS
    """Request headers an allowed origin's preflight may ask to send."""
    max_attempts: int = 3
    retry_delay: float = 0.1
    request_timeout: float = 30.0
    connect_timeout: float = 1.0
    idle_timeout: float = 30.0
    health_ttl: float = 5.0
    startup_grace: float = 10.0
    """Seconds after the proxy starts during which a backend it has never seen up is taken to be
    starting: GETs that meet a refused connection wait for it (within their deadline). After
    that, a backend that never came up is simply down, and requests fail at once."""
    max_body_bytes: int = 52_428_800
    circuit_failure_threshold: int = 5
    circuit_open_time: float = 0.5
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 3
    health_path: str = "/api/health"
    upstream_prefix: str = "/api"
    development: bool = False
    pool_size: int = 8_192
    """Backend connections requests may hold at once (each open stream holds one). Beyond it a
    request waits for one, within its deadline, and then gets 503 "Proxy At Capacity": the
    proxy's own congestion, never counted against the backend. Each connection costs two open
    files (the client's and the backend's)."""
    keepalive_timeout: float = 4.0
    """Seconds an idle pooled connection is kept; 0 disables reuse (a connection per request).
    Keep it below the backend's own keep-alive timeout, or a reused connection may be closed
    under a request that then cannot safely be retried."""
    via: str = field(default="1.1 sora2")

    @property
    def api_origin(self) -> str:
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc}"

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyConfig:
        return cls(
            api_url=settings.api_url,
            allowed_origins=frozenset({settings.frontend_origin}),
            trusted_proxies=tuple(
                ipaddress.ip_network(item, strict=False) for item in settings.proxy_trusted_proxies
            ),
            max_attempts=settings.proxy_max_attempts,
            retry_delay=settings.proxy_retry_delay_ms / 1000,
            request_timeout=settings.proxy_request_timeout_ms / 1000,
            connect_timeout=settings.proxy_connect_timeout_ms / 1000,
            idle_timeout=settings.proxy_idle_timeout_ms / 1000,
            health_ttl=settings.proxy_health_check_ttl_ms / 1000,
            startup_grace=settings.proxy_startup_grace_ms / 1000,
            max_body_bytes=settings.proxy_max_body_bytes,
            circuit_failure_threshold=settings.proxy_circuit_failure_threshold,
            circuit_open_time=settings.proxy_circuit_open_ms / 1000,
            retry_budget_ratio=settings.proxy_retry_budget_ratio,
            pool_size=settings.proxy_pool_size,
            development=settings.is_development,
        )
