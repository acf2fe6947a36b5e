"""`Idempotency-Key` on the charging POSTs: a repeated request answers the first video and is
charged once, whether it repeats later, at the same moment, or through the proxy after a reset."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sora2.proxy import PoolLimits, Proxy, ProxyConfig, RetryPolicy, mount_proxy
from tests.api.harness import RunningApi
from tests.fakes.fault_relay import Fault, FaultRelay
from tests.fakes.servers import RunningServer, start_app

PROMPT = "A paper boat drifts down a rainy street"
SIGNUP_CREDITS = 100


async def create_keyed(
    api: RunningApi, token: str, key: str, **fields: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    return await api.request(
        "POST",
        "/api/videos",
        token=token,
        json={"prompt": PROMPT} | fields,
        headers={"Idempotency-Key": key},
    )


async def balance_and_videos(api: RunningApi, token: str) -> tuple[int, int]:
    _, credits, _ = await api.request("GET", "/api/credits/balance", token=token)
    _, videos, _ = await api.request("GET", "/api/videos?limit=100", token=token)
    return int(credits["balance"]), int(videos["total"])


async def test_a_repeated_request_answers_the_first_video_and_charges_once(
    api: RunningApi,
) -> None:
    token, _ = await api.register()
    key = str(uuid.uuid4())

    status, first, response = await create_keyed(api, token, key, seconds=8)
    assert status == 202
    assert "Idempotent-Replayed" not in response.headers
    status, again, response = await create_keyed(api, token, key, seconds=8)

    assert status == 202
    assert response.headers["Idempotent-Replayed"] == "true"
    assert again == first  # the very same answer: same video, same balance
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS - 8, 1)


async def test_without_a_key_each_request_is_a_new_video(api: RunningApi) -> None:
    token, _ = await api.register()
    for _ in range(2):
        status, _, _ = await api.request(
            "POST", "/api/videos", token=token, json={"prompt": PROMPT, "seconds": 4}
        )
        assert status == 202
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS - 8, 2)


async def test_simultaneous_repeats_make_one_video(api: RunningApi) -> None:
    token, _ = await api.register()
    key = str(uuid.uuid4())

    answers = await asyncio.gather(*(create_keyed(api, token, key) for _ in range(6)))

    assert {status for status, _, _ in answers} == {202}
    assert len({body["id"] for _, body, _ in answers}) == 1
    replayed = [response.headers.get("Idempotent-Replayed") for _, _, response in answers]
    assert replayed.count(None) == 1  # one request did the work; the others replayed it
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS - 4, 1)


async def test_a_key_reused_for_another_request_is_refused(api: RunningApi) -> None:
    token, _ = await api.register()
    key = str(uuid.uuid4())
    await create_keyed(api, token, key, seconds=4)

    status, body, _ = await create_keyed(api, token, key, seconds=8)

    assert status == 422
    assert "Idempotency-Key" in body["message"]
    assert "new key" in body["message"]
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS - 4, 1)


async def test_a_refused_request_does_not_hold_its_key(api: RunningApi) -> None:
    token, _ = await api.register()
    for _ in range(2):  # 2 x 36 credits: 28 left
        await create_keyed(api, token, str(uuid.uuid4()), model="sora-2-pro", seconds=12)
    key = str(uuid.uuid4())
    status, _, _ = await create_keyed(api, token, key, model="sora-2-pro", seconds=12)
    assert status == 402

    # Nothing was kept for the refused request: the same key now works for what fits.
    status, body, response = await create_keyed(api, token, key, seconds=4)
    assert status == 202
    assert "Idempotent-Replayed" not in response.headers
    assert body["balance"] == 24


async def test_keys_belong_to_one_user(api: RunningApi) -> None:
    alice, _ = await api.register()
    bob, _ = await api.register()
    key = "shared-key-1"

    _, for_alice, _ = await create_keyed(api, alice, key)
    status, for_bob, response = await create_keyed(api, bob, key)

    assert status == 202
    assert "Idempotent-Replayed" not in response.headers
    assert for_bob["id"] != for_alice["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
async def test_a_malformed_key_is_a_400_naming_the_header(api: RunningApi, key: str) -> None:
    token, _ = await api.register()
    status, body, _ = await api.request(
        "POST",
        "/api/videos",
        token=token,
        json={"prompt": PROMPT},
        headers={"Idempotency-Key": key.encode().decode("latin-1")},
    )
    assert status == 400
    assert "Idempotency-Key" in body["message"]
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS, 0)


async def test_regenerate_with_a_key_makes_one_new_video(api: RunningApi) -> None:
    token, _ = await api.register()
    _, source, _ = await create_keyed(api, token, str(uuid.uuid4()))
    key = str(uuid.uuid4())
    path = f"/api/videos/{source['id']}/regenerate"

    answers = [
        await api.request("POST", path, token=token, headers={"Idempotency-Key": key})
        for _ in range(2)
    ]

    assert [status for status, _, _ in answers] == [202, 202]
    assert answers[0][1]["id"] == answers[1][1]["id"] != source["id"]
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS - 8, 2)

    # A late repeat still gets its answer after the source video is gone.
    assert (await api.request("DELETE", f"/api/videos/{source['id']}", token=token))[0] == 204
    status, late, response = await api.request(
        "POST", path, token=token, headers={"Idempotency-Key": key}
    )
    assert (status, late["id"]) == (202, answers[0][1]["id"])
    assert response.headers["Idempotent-Replayed"] == "true"


@pytest.fixture
async def proxy_to_api_through_relay(
    api: RunningApi,
) -> AsyncIterator[tuple[FaultRelay, RunningServer]]:
    """The web's proxy in front of the real api, with a fault relay between the two."""
    relay = FaultRelay(int(api.url.rsplit(":", 1)[1]))
    await relay.start()
    # No pooled connections: each attempt meets a fault of its own.
    proxy = Proxy(
        ProxyConfig(
            api_url=relay.url, retries=RetryPolicy(delay=0.01), pool=PoolLimits(keepalive=0)
        )
    )
    app = web.Application()
    mount_proxy(app, proxy)
    server = await start_app(app)
    try:
        yield relay, server
    finally:
        await server.stop()
        await relay.stop()


async def test_a_create_reset_after_the_api_acted_is_retried_by_the_proxy_and_charged_once(
    api: RunningApi, proxy_to_api_through_relay: tuple[FaultRelay, RunningServer]
) -> None:
    relay, proxy = proxy_to_api_through_relay
    token, _ = await api.register()
    # The api creates and charges; the answer is lost on the way back.
    relay.faults.append(Fault.RESET_AFTER_REQUEST)

    async with api.http.post(
        proxy.url + "/api/proxy/videos",
        json={"prompt": PROMPT, "seconds": 8},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
    ) as response:
        body = await response.json()
        assert response.status == 202, body
        assert response.headers["Idempotent-Replayed"] == "true"  # the retry found the first

    assert relay.faults_applied == [Fault.RESET_AFTER_REQUEST, Fault.PASS]
    assert await balance_and_videos(api, token) == (SIGNUP_CREDITS - 8, 1)
