"""Failure handling with real faults on loopback: retries only when safe, one deadline,
health learned off the request path, a circuit that fails fast and recovers quickly."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from sora2.proxy import CircuitState, Failure, Health
from tests.fakes.backend import BackendState, create_backend
from tests.fakes.fault_relay import Fault, FaultRelay, blackhole_port
from tests.fakes.servers import RunningServer, free_port, start_app
from tests.proxy.conftest import ACCEPTS, MakeProxy, eventually


async def test_post_reset_after_send_is_not_retried(
    relay: FaultRelay,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0)
    relay.faults.append(Fault.RESET_AFTER_REQUEST)
    async with client.post(proxy.url + "/count/charge", json={"credits": 5}) as response:
        assert response.status == 502
        body = await response.json()
    assert body["error"] == "Bad Gateway"
    assert body["details"]["attempts"] == 1
    assert body["details"]["errorCode"] == "ECONNRESET"
    assert backend_state.count("charge") == 1  # executed exactly once


async def test_post_with_idempotency_key_is_retried_after_reset(
    relay: FaultRelay,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0)
    relay.faults.append(Fault.RESET_BEFORE_REQUEST)
    headers = {"Idempotency-Key": "create-42"}
    async with client.post(proxy.url + "/count/keyed", json={}, headers=headers) as response:
        assert response.status == 200
    assert backend_state.count("keyed") == 1


async def test_streamed_body_is_never_resent_once_its_first_byte_left(
    relay: FaultRelay,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0)

    async def upload():
        for _ in range(20):
            yield b"x" * 100_000

    relay.faults.append(Fault.RESET_MID_BODY)
    headers = {"Idempotency-Key": "upload-1"}  # retrying would be allowed, were the body replayable
    async with client.put(proxy.url + "/echo/upload", data=upload(), headers=headers) as response:
        assert response.status == 502
        assert (await response.json())["details"]["attempts"] == 1
    assert relay.faults_applied == [Fault.RESET_MID_BODY]
    assert backend_state.received == []


async def test_get_reset_before_response_is_retried(
    relay: FaultRelay,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0)
    relay.faults.extend([Fault.RESET_BEFORE_REQUEST, Fault.RESET_AFTER_REQUEST])
    async with client.get(proxy.url + "/count/read") as response:
        assert response.status == 200
        assert await response.json() == {"count": 2}


async def test_post_is_retried_when_the_connection_was_refused(
    backend_state: BackendState, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    backend = await start_app(create_backend(backend_state))
    # The application's own advice replaces the proxy's neutral default.
    proxy = await make_proxy(backend.url, suggestions={Failure.REFUSED: "Run sora2 dev api."})
    async with client.get(proxy.url + "/echo/up") as response:
        assert response.status == 200
    await backend.stop()  # the api just died; the proxy has not noticed yet
    async with client.post(proxy.url + "/videos", json={}) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        body = await response.json()
    assert body["error"] == "Backend API Connection Refused"
    assert body["details"]["errorCode"] == "ECONNREFUSED"
    assert body["details"]["attempts"] == 3  # nothing was sent, so retrying was safe
    assert body["details"]["suggestion"] == "Run sora2 dev api."
    assert body["requestId"] == response.headers["X-Request-ID"]


async def test_truncated_response_body_is_a_bad_gateway_not_a_short_success(
    relay: FaultRelay, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0)
    relay.default = Fault.TRUNCATE
    relay.truncate_after = 4096
    async with client.get(proxy.url + "/big?mib=1") as response:
        # Content-Length 1 MiB: headers passed on, then the body breaks off.
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert proxy.proxy.metrics.truncated_responses == 1  # counted, and logged as truncated


async def test_backend_503_is_retried_for_get_honouring_retry_after(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, max_attempts=2)
    started = time.monotonic()
    async with client.get(proxy.url + "/status/503?retry_after=1") as response:
        assert response.status == 503  # the backend's own answer passes through at the end
        assert response.headers["Retry-After"] == "1"
    assert time.monotonic() - started >= 1.0
    assert backend_state.count("/api/status/503") == 2


async def test_backend_503_for_post_passes_through_without_retry(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url)
    async with client.post(proxy.url + "/status/503") as response:
        assert response.status == 503
        assert await response.json() == {"status": 503}
    assert backend_state.count("/api/status/503") == 1


async def test_retry_after_beyond_the_deadline_is_not_waited_for(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, request_timeout=2.0)
    started = time.monotonic()
    async with client.get(proxy.url + "/status/503?retry_after=120") as response:
        assert response.status == 503
    assert time.monotonic() - started < 1.0
    assert backend_state.count("/api/status/503") == 1


async def test_retry_budget_caps_retries_during_an_outage(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(
        backend.url,
        max_attempts=3,
        retry_delay=0.05,
        retry_budget_ratio=0.1,
        retry_budget_min=2,
        circuit_failure_threshold=10_000,
        # 40 connections at once share this test's event loop with the backend: on a busy
        # machine the default 0.5 s connect timeout can fire, and a 504 is not what this tests.
        connect_timeout=5.0,
        idle_timeout=5.0,
    )

    async def one() -> int:
        async with client.get(proxy.url + "/status/502") as response:
            return response.status

    statuses = await asyncio.gather(*(one() for _ in range(40)))
    assert set(statuses) == {502}
    # Without a budget every request would be sent 3 times: 120 upstream calls.
    upstream_calls = backend_state.count("/api/status/502")
    assert 40 <= upstream_calls < 60
    assert proxy.proxy.metrics.budget_refusals > 0


async def test_stalled_backend_gets_504_within_the_deadline(
    relay: FaultRelay, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(relay.url, keepalive_timeout=0, request_timeout=0.6, max_attempts=3)
    relay.default = Fault.STALL
    for method in ("GET", "POST"):
        started = time.monotonic()
        async with client.request(method, proxy.url + "/echo/slow") as response:
            elapsed = time.monotonic() - started
            assert response.status == 504
            body = await response.json()
        assert body["error"] == "Request Timeout"
        assert body["details"]["timeout"] == 600
        assert abs(elapsed - 0.6) <= 0.1, elapsed


async def test_blackholed_connects_time_out_within_the_deadline(
    make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    with blackhole_port() as port:
        proxy = await make_proxy(
            f"http://127.0.0.1:{port}", request_timeout=0.8, connect_timeout=0.2
        )
        proxy.proxy.health.ever_up = True
        started = time.monotonic()
        async with client.get(proxy.url + "/echo/x") as response:
            elapsed = time.monotonic() - started
            assert response.status == 504
        assert elapsed <= 0.9


async def test_backend_stalling_mid_body_breaks_the_response(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(backend.url, idle_timeout=0.3)
    started = time.monotonic()
    async with client.get(proxy.url + "/stall-body") as response:
        assert response.status == 200
        assert await response.content.readexactly(11) == b"first-chunk"
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert time.monotonic() - started < 2.0


@ACCEPTS
async def test_client_disconnect_cancels_the_upstream_request(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    accept: bytes,
) -> None:
    proxy = await make_proxy(backend.url)
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"GET /api/proxy/stall HTTP/1.1\r\nHost: x\r\n" + accept + b"\r\n")
    await writer.drain()
    await asyncio.wait_for(backend_state.stall_started.wait(), 5)
    writer.close()
    await eventually(lambda: backend_state.cancelled == 1)


async def test_client_leaving_mid_download_stops_the_upstream_transfer(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url)
    response = await client.get(proxy.url + "/big?mib=256")
    await response.content.readexactly(1024 * 1024)
    response.close()
    await eventually(lambda: backend_state.cancelled == 1)
    async with client.get(proxy.url + "/echo/still-fine") as response:
        assert response.status == 200


async def test_no_health_call_on_the_success_path(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(backend.url, health_ttl=60.0)
    await eventually(lambda: proxy.proxy.health.verdict is Health.UP)
    checks_before = backend_state.health_hits
    for _ in range(50):
        async with client.get(proxy.url + "/echo/x") as response:
            assert response.status == 200
    assert backend_state.health_hits == checks_before


async def test_backend_without_a_health_route_still_works(
    backend: RunningServer, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The seed's proxy probed a route its api lacked, and refused everything. Ours: a 404 from
    the health route still proves the backend is alive."""
    proxy = await make_proxy(backend.url, health_path="/api/no-such-health")
    await eventually(lambda: proxy.proxy.health.verdict is Health.UP)
    async with client.get(proxy.url + "/echo/x") as response:
        assert response.status == 200


async def test_circuit_opens_fails_fast_and_recovers_within_a_second(
    backend_state: BackendState, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    backend = await start_app(create_backend(backend_state), port)
    proxy = await make_proxy(backend.url, circuit_failure_threshold=3, request_timeout=2.0)
    async with client.get(proxy.url + "/echo/up") as response:
        assert response.status == 200
    await backend.stop()

    # Failures accumulate until the backend is known down; then answers are immediate.
    async def known_down() -> bool:
        async with client.get(proxy.url + "/echo/x") as response:
            body = await response.json()
            return bool(body.get("error") == "Backend API Unavailable")

    await eventually(known_down)
    started = time.monotonic()
    async with client.post(proxy.url + "/echo/x") as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        body = await response.json()
    assert time.monotonic() - started < 0.05
    assert body["details"]["healthCheckFailed"] is True
    assert body["details"]["attempts"] == 0
    assert proxy.proxy.circuit.state is not CircuitState.CLOSED or (
        proxy.proxy.health.verdict is Health.DOWN
    )

    backend = await start_app(create_backend(backend_state), port)
    returned = time.monotonic()

    async def flows() -> bool:
        async with client.get(proxy.url + "/echo/back") as response:
            return response.status == 200

    await eventually(flows, timeout=2.0)
    assert time.monotonic() - returned < 1.0
    await backend.stop()


async def test_get_sent_while_the_backend_is_starting_succeeds_once_it_is_up(
    backend_state: BackendState, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    proxy = await make_proxy(f"http://127.0.0.1:{port}", request_timeout=5.0)
    pending = asyncio.ensure_future(client.get(proxy.url + "/echo/early"))
    # The request is waiting inside the proxy (it has met a refused connection).
    await eventually(lambda: proxy.proxy.metrics.attempts["refused"] >= 1)
    assert not pending.done()
    backend = await start_app(create_backend(backend_state), port)
    try:
        response = await asyncio.wait_for(pending, 5)
        assert response.status == 200
        assert (await response.json())["path"] == "/api/echo/early"
        response.release()
    finally:
        await backend.stop()


async def test_backend_that_never_starts_is_reported_after_the_startup_grace(
    make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    proxy = await make_proxy(f"http://127.0.0.1:{port}", request_timeout=20.0, startup_grace=0.5)
    sent = time.monotonic()
    async with client.get(proxy.url + "/echo/early") as response:
        waited = time.monotonic() - sent
        body = await response.json()
    # It waited for a possible start, but not for the whole 20 s deadline.
    assert response.status == 503
    assert body["error"] == "Backend API Connection Refused"
    assert waited < 5.0
    # Once the grace is over, a backend that never came up is down: no more waiting.
    sent = time.monotonic()
    async with client.get(proxy.url + "/echo/later") as response:
        assert response.status == 503
    assert time.monotonic() - sent < 1.0


async def test_the_duration_histogram_measures_up_to_the_response_headers(
    backend: RunningServer,
    backend_state: BackendState,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await make_proxy(backend.url)
    caplog.set_level("INFO", logger="sora2.proxy")
    started = time.monotonic()
    async with client.get(proxy.url + "/sse") as stream:
        backend_state.sse_release.put_nowait("one")
        assert await stream.content.readline() == b"data: one\n"
        await asyncio.sleep(0.5)  # a viewer watching for a while
        backend_state.sse_release.put_nowait("__end__")
        await stream.read()
    watched = time.monotonic() - started
    assert watched >= 0.5
    histogram = proxy.proxy.metrics
    assert histogram._duration_sum < 0.25  # the answer was quick; the watching was not
    assert any("GET /api/proxy/sse 200" in line for line in caplog.messages)


async def test_requests_wait_for_a_backend_restarted_on_purpose_but_fail_fast_in_an_outage(
    backend_state: BackendState, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    backend = await start_app(create_backend(backend_state), port)
    restarting: list[float] = []  # what the launcher's signal says: seconds left, if any
    proxy = await make_proxy(
        backend.url, restart_signal=lambda: restarting[0] if restarting else 0.0
    )
    async with client.get(proxy.url + "/echo/up") as response:
        assert response.status == 200
    await eventually(lambda: proxy.proxy.health.ever_up)

    restarting.append(10.0)
    await backend.stop()
    pending = [
        asyncio.ensure_future(client.get(proxy.url + "/echo/during")),
        asyncio.ensure_future(client.post(proxy.url + "/echo/during", json={"n": 1})),
    ]
    await eventually(lambda: proxy.proxy.metrics.attempts["refused"] >= 2)
    assert not any(request.done() for request in pending)  # held, not failed
    backend = await start_app(create_backend(backend_state), port)
    restarting.clear()
    try:
        for request in pending:
            response = await asyncio.wait_for(request, 5)
            assert response.status == 200, await response.text()
            response.release()
        assert backend_state.count("/api/echo/during") == 2  # each sent once, after the restart
    finally:
        await backend.stop()

    # No restart announced: a refused connection is an outage, and fails fast.
    started = time.monotonic()
    async with client.get(proxy.url + "/echo/outage") as response:
        assert response.status == 503
    assert time.monotonic() - started < 1.0
