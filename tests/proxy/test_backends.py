"""One proxy over several backends, with real servers and faults on loopback: requests are
balanced, safe ones move off a failing backend, a backend that keeps failing is ejected until its
health check passes, and the proxy's errors name the backends it tried."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import generate_latest

from sora2.proxy import BalancePolicy, Health
from tests.fakes.backend import BackendState, create_backend
from tests.fakes.fault_relay import Fault, FaultRelay
from tests.fakes.servers import RunningServer, start_app
from tests.proxy.conftest import MakeProxy, ProxyUnderTest, eventually


@dataclasses.dataclass
class Api:
    """One backend behind its own fault relay (stop the relay: connections are refused)."""

    state: BackendState
    server: RunningServer
    relay: FaultRelay

    @property
    def url(self) -> str:
        return self.relay.url


@pytest.fixture
async def apis() -> AsyncIterator[list[Api]]:
    started: list[Api] = []
    for _ in range(2):
        state = BackendState()
        server = await start_app(create_backend(state))
        relay = FaultRelay(server.port)
        await relay.start()
        started.append(Api(state, server, relay))
    yield started
    for api in started:
        await api.relay.stop()
        await api.server.stop()


async def proxy_over(make_proxy: MakeProxy, apis: list[Api], **overrides: object) -> ProxyUnderTest:
    proxy = await make_proxy(apis[0].url, api_urls=tuple(api.url for api in apis), **overrides)
    await eventually(lambda: all(b.health.verdict is Health.UP for b in proxy.proxy.backends))
    return proxy


async def get_status(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as response:
        await response.read()
        return response.status


async def test_requests_are_spread_over_both_backends(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis)
    for _ in range(20):
        assert await get_status(client, proxy.url + "/count/read") == 200
    assert [api.state.count("read") for api in apis] == [10, 10]


async def test_round_robin_takes_each_backend_in_turn(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, balance=BalancePolicy(strategy="round_robin"))
    for _ in range(6):
        assert await get_status(client, proxy.url + "/echo/turn") == 200
    assert [api.state.count("/api/echo/turn") for api in apis] == [3, 3]


async def test_a_busy_backend_gets_no_new_requests_while_the_other_is_idle(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis)
    slow = asyncio.create_task(get_status(client, proxy.url + "/stall"))
    await eventually(lambda: any(api.state.stall_started.is_set() for api in apis))
    busy, idle = apis if apis[0].state.stall_started.is_set() else apis[::-1]
    for _ in range(6):
        assert await get_status(client, proxy.url + "/count/read") == 200
    assert idle.state.count("read") == 6
    assert busy.state.count("read") == 0
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_every_get_succeeds_while_one_backend_refuses_connections(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, keepalive_timeout=0)
    await apis[1].relay.stop()
    statuses = [await get_status(client, proxy.url + "/count/read") for _ in range(20)]
    assert statuses == [200] * 20
    assert apis[0].state.count("read") == 20
    assert proxy.proxy.backends[1].attempts["refused"] >= 1
    assert proxy.proxy.metrics.failovers >= 1


async def test_gets_in_flight_when_a_backend_dies_all_succeed(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis)
    await apis[1].relay.stop()
    statuses = await asyncio.gather(
        *(get_status(client, proxy.url + "/count/read") for _ in range(40))
    )
    assert statuses == [200] * 40


async def test_a_hung_backend_is_ejected_and_gets_still_succeed(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(
        make_proxy,
        apis,
        keepalive_timeout=0,
        balance=BalancePolicy(try_timeout=0.3, eject_after=2, eject_time=30.0),
    )
    apis[1].relay.default = Fault.STALL  # accepts and reads, never answers (health passes)
    statuses = [await get_status(client, proxy.url + "/count/read") for _ in range(10)]
    assert statuses == [200] * 10
    hung = proxy.proxy.backends[1]
    assert hung.ejected
    assert hung.ejections == 1
    assert hung.attempts["timeout"] == 2  # tried twice, then left alone
    assert apis[0].state.count("read") == 10


async def test_gets_waiting_on_a_backend_move_at_once_when_it_is_ejected(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(
        make_proxy,
        apis,
        request_timeout=20.0,
        idle_timeout=20.0,
        health_ttl=0.4,
        balance=BalancePolicy(strategy="round_robin", try_timeout=10.0),
    )
    apis[1].relay.default = Fault.STALL  # hung for requests...
    apis[1].state.health_status = 503  # ...and its health check says so
    started = asyncio.get_running_loop().time()
    statuses = await asyncio.gather(
        *(get_status(client, proxy.url + f"/count/read{n}") for n in range(6))
    )
    assert statuses == [200] * 6
    assert proxy.proxy.backends[1].ejected
    assert proxy.proxy.backends[1].attempts["timeout"] == 3  # the three sent there
    # Not the 10 s try timeout: the ejection (two failed health checks) ended their wait.
    assert asyncio.get_running_loop().time() - started < 5.0


async def test_a_post_whose_first_attempt_was_sent_is_not_replayed_elsewhere(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, keepalive_timeout=0)
    for api in apis:
        api.relay.faults.append(Fault.RESET_AFTER_REQUEST)
    async with client.post(proxy.url + "/count/charge", json={"credits": 5}) as response:
        assert response.status == 502
        body = await response.json()
    assert body["details"]["attempts"] == 1
    assert [entry["outcome"] for entry in body["details"]["backends"]] == ["ECONNRESET"]
    assert sum(api.state.count("charge") for api in apis) == 1  # executed exactly once


async def test_a_refused_post_goes_to_the_other_backend(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(
        make_proxy, apis, keepalive_timeout=0, balance=BalancePolicy(strategy="round_robin")
    )
    await apis[0].relay.stop()
    for _ in range(2):  # one of them meets the refusing backend first
        async with client.post(proxy.url + "/count/charge", json={}) as response:
            assert response.status == 200
    assert apis[1].state.count("charge") == 2


async def test_a_post_with_an_idempotency_key_moves_to_the_other_backend_after_a_reset(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, keepalive_timeout=0)
    apis[0].relay.faults.append(Fault.RESET_BEFORE_REQUEST)  # the first request goes there
    headers = {"Idempotency-Key": "create-7"}
    async with client.post(proxy.url + "/count/keyed", json={}, headers=headers) as response:
        assert response.status == 200
    assert [api.state.count("keyed") for api in apis] == [0, 1]
    assert proxy.proxy.metrics.failovers == 1


async def test_an_ejected_backend_returns_once_its_health_check_passes(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(
        make_proxy, apis, health_ttl=0.4, balance=BalancePolicy(eject_time=0.2)
    )
    sick = proxy.proxy.backends[1]
    apis[1].state.health_status = 503
    await eventually(lambda: sick.ejected)
    for _ in range(6):
        assert await get_status(client, proxy.url + "/count/read") == 200
    assert apis[1].state.count("read") == 0
    apis[1].state.health_status = 200

    async def reaches_it_again() -> bool:
        await get_status(client, proxy.url + "/count/read")
        return apis[1].state.count("read") > 0

    await eventually(reaches_it_again)
    assert not sick.ejected
    assert sick.ejections == 1


async def test_errors_name_the_backends_tried_when_every_one_is_down(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, keepalive_timeout=0, startup_grace=0)
    for api in apis:
        await api.relay.stop()
    async with client.get(proxy.url + "/count/read") as response:
        assert response.status == 503
        body = await response.json()
    tried = body["details"]["backends"]
    assert {entry["backend"] for entry in tried} == {"api1", "api2"}  # no address outside dev
    assert {entry["outcome"] for entry in tried} == {"ECONNREFUSED"}
    # Both are now known down: the next request fails at once, and says why for each.
    async with client.get(proxy.url + "/count/read") as response:
        assert response.status == 503
        assert response.headers["Retry-After"]
        body = await response.json()
    assert body["error"] == "Backend API Unavailable"
    assert body["details"]["errorCode"] == "NO_BACKEND_AVAILABLE"
    assert body["details"]["attempts"] == 0
    assert sorted(body["details"]["backends"], key=lambda entry: entry["backend"]) == [
        {"backend": "api1", "outcome": "HEALTH_CHECK_FAILED"},
        {"backend": "api2", "outcome": "HEALTH_CHECK_FAILED"},
    ]


async def test_errors_show_backend_addresses_in_development(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, startup_grace=0, expose_internals=True)
    for api in apis:
        await api.relay.stop()
    async with client.get(proxy.url + "/count/read") as response:
        body = await response.json()
    assert {entry["backend"] for entry in body["details"]["backends"]} == {
        apis[0].url,
        apis[1].url,
    }


async def test_one_backend_errors_are_as_before(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(apis[0].url, startup_grace=0)
    await apis[0].relay.stop()
    async with client.get(proxy.url + "/count/read") as response:
        assert response.status == 503
        body = await response.json()
    assert body["error"] == "Backend API Connection Refused"
    assert "backends" not in body["details"]


async def test_metrics_are_kept_per_backend(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(make_proxy, apis, keepalive_timeout=0)
    for _ in range(4):
        assert await get_status(client, proxy.url + "/count/read") == 200
    await apis[1].relay.stop()
    for _ in range(4):
        assert await get_status(client, proxy.url + "/count/read") == 200
    text = generate_latest(proxy.proxy.metrics.registry).decode()
    first, second = apis[0].url, apis[1].url
    assert f'sora2_proxy_backend_attempts_total{{backend="{first}",outcome="response"}} 6.0' in text
    assert (
        f'sora2_proxy_backend_attempts_total{{backend="{second}",outcome="response"}} 2.0' in text
    )
    assert f'sora2_proxy_backend_attempts_total{{backend="{second}",outcome="refused"}}' in text
    assert f'sora2_proxy_backend_outstanding{{backend="{first}"}} 0.0' in text
    assert f'sora2_proxy_backend_ejected{{backend="{first}"}} 0.0' in text
    assert f'sora2_proxy_backend_ejections_total{{backend="{second}"}}' in text
    assert f'sora2_proxy_backend_circuit_state{{backend="{first}"}} 0.0' in text
    assert "sora2_proxy_failovers_total 1.0" in text


async def test_a_slow_get_is_not_cut_short_when_no_other_backend_could_take_it(
    apis: list[Api], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await proxy_over(
        make_proxy,
        apis,
        request_timeout=1.0,
        health_ttl=0.4,
        balance=BalancePolicy(strategy="round_robin", try_timeout=0.2),
    )
    await apis[1].relay.stop()
    await eventually(lambda: proxy.proxy.backends[1].health.verdict is Health.DOWN)
    started = asyncio.get_running_loop().time()
    async with client.get(proxy.url + "/stall") as response:
        assert response.status == 504
    # The whole deadline was given to the one backend that could answer, not the try timeout.
    assert asyncio.get_running_loop().time() - started >= 0.9
