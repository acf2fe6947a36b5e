"""A resilient reverse proxy for one backend or several, on aiohttp.

Streams both ways, retries only when safe, within one deadline; learns the backend's health off
the request path and fails fast while it is down; over several backends, balances requests,
moves safe ones off a failing backend and ejects one that keeps failing; answers its own
failures as actionable JSON.
It imports nothing of the application around it: whatever it should know comes in through
`ProxyConfig` (and `Proxy`'s arguments). This example runs as a test (tests/unit):

>>> import asyncio
>>> import aiohttp
>>> from aiohttp import web
>>> from sora2.proxy import HealthPolicy, Proxy, ProxyConfig, Timeouts, mount_proxy
>>> config = ProxyConfig(
...     api_url="http://127.0.0.1:9",  # nothing listens there
...     timeouts=Timeouts(request=5.0, connect=0.5),
...     health=HealthPolicy(startup_grace=0),  # do not wait for it to start
... )
>>> app = web.Application()
>>> mount_proxy(app, Proxy(config, public_prefix="/api/proxy"))
>>> async def ask(path):
...     runner = web.AppRunner(app, handler_cancellation=True)
...     await runner.setup()
...     await web.TCPSite(runner, "127.0.0.1", 0).start()
...     port = runner.addresses[0][1]
...     try:
...         async with aiohttp.ClientSession() as client:
...             async with client.get(f"http://127.0.0.1:{port}{path}") as response:
...                 return response.status, (await response.json())["error"]
...     finally:
...         await runner.cleanup()
>>> asyncio.run(ask("/api/proxy/videos"))
(503, 'Backend API Connection Refused')
"""

from sora2.proxy._backends import Backend
from sora2.proxy._circuit import CircuitBreaker, CircuitState
from sora2.proxy._config import (
    BalancePolicy,
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
    "Backend",
    "BalancePolicy",
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
