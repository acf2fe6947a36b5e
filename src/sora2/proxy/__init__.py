"""A resilient reverse proxy for one backend, on aiohttp.

    proxy = Proxy(ProxyConfig(api_url="http://127.0.0.1:3101"))
    mount_proxy(app, proxy, prefix="/api/proxy")

Streams both ways, retries only when safe, within one deadline; learns the backend's health off
the request path and fails fast while it is down; answers its own failures as actionable JSON.
"""

from sora2.proxy._circuit import CircuitBreaker, CircuitState
from sora2.proxy._config import (
    BreakerPolicy,
    HealthPolicy,
    PoolLimits,
    ProxyConfig,
    RetryPolicy,
    Timeouts,
)
from sora2.proxy._errors import Failure, ProxyError
from sora2.proxy._health import Health
from sora2.proxy._metrics import ProxyMetrics
from sora2.proxy._mount import mount_proxy
from sora2.proxy._proxy import Proxy

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "CircuitState",
    "Failure",
    "Health",
    "HealthPolicy",
    "PoolLimits",
    "Proxy",
    "ProxyConfig",
    "ProxyError",
    "ProxyMetrics",
    "RetryPolicy",
    "Timeouts",
    "mount_proxy",
]
