"""The breaker and the retries count what really happened: one verdict per client request, only
the backend's own failures, and exactly the attempts the backend saw."""

from __future__ import annotations

import aiohttp

from sora2.proxy import CircuitState
from tests.fakes.backend import BackendState
from tests.fakes.fault_relay import Fault, FaultRelay
from tests.fakes.servers import RunningServer
from tests.proxy.conftest import MakeProxy


async def test_a_request_that_fails_every_attempt_is_one_failure_for_the_breaker(
    relay: FaultRelay, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(
        relay.url, keepalive_timeout=0, max_attempts=3, circuit_failure_threshold=3
    )
    async with client.get(proxy.url + "/echo/up") as response:
        assert response.status == 200
    relay.default = Fault.RESET_BEFORE_REQUEST
    async with client.get(proxy.url + "/echo/x") as response:
        assert response.status == 502
        assert (await response.json())["details"]["attempts"] == 3
    assert proxy.proxy.circuit.consecutive_failures == 1
    assert proxy.proxy.circuit.state is CircuitState.CLOSED


async def test_one_route_answering_503_does_not_cut_off_the_routes_that_work(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, max_attempts=1, circuit_failure_threshold=3)
    for _ in range(10):
        async with client.get(proxy.url + "/status/503") as response:
            assert response.status == 503
            assert await response.json() == {"status": 503}  # the backend's own answer
    async with client.get(proxy.url + "/echo/works") as response:
        assert response.status == 200
    assert proxy.proxy.circuit.state is CircuitState.CLOSED


async def test_a_response_aiohttp_cannot_parse_is_not_retried_nor_held_against_the_backend(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, max_attempts=3, circuit_failure_threshold=1)
    async with client.get(proxy.url + "/huge-header") as response:
        assert response.status == 502
        body = await response.json()
    assert body["details"]["errorCode"] == "EINVALIDRESPONSE"
    assert body["details"]["attempts"] == 1
    assert backend_state.count("/api/huge-header") == 1
    assert proxy.proxy.circuit.state is CircuitState.CLOSED
    async with client.get(proxy.url + "/echo/still-up") as response:
        assert response.status == 200


async def test_a_retry_budget_slot_is_given_back_when_the_response_headers_arrive(
    relay: FaultRelay, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(
        relay.url, keepalive_timeout=0, retry_budget_ratio=0.0, retry_budget_min=1
    )
    two_resets = [Fault.RESET_BEFORE_REQUEST, Fault.RESET_BEFORE_REQUEST]
    relay.faults.extend(two_resets)
    async with client.get(proxy.url + "/sse") as stream:  # retried, then a long stream
        assert stream.status == 200
        relay.faults.extend(two_resets)
        async with client.get(proxy.url + "/echo/needs-a-retry") as response:
            assert response.status == 200
        assert proxy.proxy.metrics.budget_refusals == 0


async def test_a_get_reset_after_sending_reaches_the_backend_once_per_reported_attempt(
    relay: FaultRelay,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0, max_attempts=3)
    relay.default = Fault.RESET_AFTER_REQUEST
    async with client.get(proxy.url + "/count/reset") as response:
        assert response.status == 502
        attempts = (await response.json())["details"]["attempts"]
    assert attempts == 3
    assert backend_state.count("reset") == attempts  # aiohttp re-sent each one silently before
