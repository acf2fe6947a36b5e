from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from sora2.proxy import Proxy, ProxyConfig, mount_proxy
from tests.fakes.backend import BackendState, create_backend
from tests.fakes.fault_relay import FaultRelay
from tests.fakes.servers import RunningServer, start_app

FRONTEND = "http://app.example:3200"


@dataclasses.dataclass
class ProxyUnderTest:
    proxy: Proxy
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url + "/api/proxy"


@pytest.fixture
async def backend_state() -> BackendState:
    return BackendState()


@pytest.fixture
async def backend(backend_state: BackendState) -> AsyncIterator[RunningServer]:
    server = await start_app(create_backend(backend_state))
    yield server
    await server.stop()


@pytest.fixture
async def relay(backend: RunningServer) -> AsyncIterator[FaultRelay]:
    relay = FaultRelay(backend.port)
    await relay.start()
    yield relay
    await relay.stop()


# Tests name the knobs they turn flat (`request_timeout=0.5`); each lives in one of the
# config's value objects.
_GROUPED = {
    "request_timeout": ("timeouts", "request"),
    "connect_timeout": ("timeouts", "connect"),
    "idle_timeout": ("timeouts", "idle"),
    "pool_size": ("pool", "size"),
    "keepalive_timeout": ("pool", "keepalive"),
    "circuit_failure_threshold": ("breaker", "failure_threshold"),
    "circuit_open_time": ("breaker", "open_time"),
    "probe_timeout": ("breaker", "probe_timeout"),
    "max_attempts": ("retries", "max_attempts"),
    "retry_delay": ("retries", "delay"),
    "retry_budget_ratio": ("retries", "budget_ratio"),
    "retry_budget_min": ("retries", "budget_min"),
    "health_path": ("health", "path"),
    "health_ttl": ("health", "ttl"),
    "startup_grace": ("health", "startup_grace"),
}


def config_for(api_url: str, **overrides: Any) -> ProxyConfig:
    settings: dict[str, Any] = {
        "request_timeout": 5.0,
        "connect_timeout": 0.5,
        "idle_timeout": 2.0,
        "health_ttl": 5.0,
        "retry_delay": 0.01,
        **overrides,
    }
    config = ProxyConfig(api_url=api_url, allowed_origins=frozenset({FRONTEND}))
    groups: dict[str, dict[str, Any]] = {}
    plain: dict[str, Any] = {}
    for name, value in settings.items():
        if name in _GROUPED:
            group, field = _GROUPED[name]
            groups.setdefault(group, {})[field] = value
        else:
            plain[name] = value
    for group, fields in groups.items():
        plain[group] = dataclasses.replace(getattr(config, group), **fields)
    return dataclasses.replace(config, **plain)


MakeProxy = Callable[..., Awaitable[ProxyUnderTest]]


@pytest.fixture
async def make_proxy() -> AsyncIterator[MakeProxy]:
    running: list[RunningServer] = []

    async def make(api_url: str, **overrides: Any) -> ProxyUnderTest:
        proxy = Proxy(config_for(api_url, **overrides))
        app = web.Application()
        mount_proxy(app, proxy)
        server = await start_app(app)
        running.append(server)
        return ProxyUnderTest(proxy, server)

    yield make
    for server in running:
        await server.stop()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The proxy runs on uvloop in the web (its transports are not asyncio's classes), so its
    suite does too; the web's and the api's suites keep asyncio's own loop."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["ordinary", "event-stream"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aiohttp.ClientSession]:
    """The test client, twice: as most clients ask, and asking every GET for an event stream
    (`Accept: text/event-stream`, as a browser's EventSource does). The proxy relays those on
    its own protocol (`_event_stream.py`) instead of aiohttp's client, and every behaviour of
    this suite must hold for both."""
    headers = {"Accept": "text/event-stream"} if request.param == "event-stream" else None
    async with aiohttp.ClientSession(auto_decompress=False, headers=headers) as session:
        yield session


# The raw-socket tests' request line variants: as most clients ask, and as an EventSource asks.
ACCEPTS = pytest.mark.parametrize(
    "accept", [b"", b"Accept: text/event-stream\r\n"], ids=["ordinary", "event-stream"]
)


def accept_of(client: aiohttp.ClientSession) -> bytes:
    """The `Accept` line the parametrized `client` sends, for requests written by hand."""
    accept = client.headers.get("Accept")
    return f"Accept: {accept}\r\n".encode() if accept else b""


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Wait until `condition()` holds, failing the test when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
