"""Videos and credits through the running api: charging, validation, paging, ownership, cancel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sora2.settings import Settings
from tests.api.conftest import make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, running_api

PROMPT = "A red fox runs through fresh snow at dawn"


async def create(api: RunningApi, token: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    status, body, _ = await api.request(
        "POST", "/api/videos", token=token, json={"prompt": PROMPT} | fields
    )
    return status, body


async def balance(api: RunningApi, token: str) -> int:
    status, body, _ = await api.request("GET", "/api/credits/balance", token=token)
    assert status == 200
    return int(body["balance"])


async def ledger(api: RunningApi, token: str) -> list[tuple[str, int]]:
    _, body, _ = await api.request("GET", "/api/credits/transactions?limit=100", token=token)
    return [(item["type"], item["amount"]) for item in body["items"]]


async def test_create_is_queued_and_charged_by_the_price_table(api: RunningApi) -> None:
    token, _ = await api.register()
    status, video = await create(api, token, model="sora-2-pro", seconds=8, size="720x1280")
    assert status == 202
    assert video["status"] == "queued"
    assert video["cost"] == 24  # sora-2-pro: 3 credits per second
    assert video["balance"] == 76
    assert await balance(api, token) == 76
    assert await ledger(api, token) == [("consume", -24), ("gift", 100)]
    status, cheap = await create(api, token, seconds=4)
    assert cheap["cost"] == 4  # sora-2: 1 credit per second


async def test_the_prompt_is_trimmed_and_bounded(api: RunningApi) -> None:
    token, _ = await api.register()
    status, video = await create(api, token, prompt="   a cat   ")
    assert status == 202
    assert video["prompt"] == "a cat"
    for prompt in ("    ", "x" * 2001):
        status, body = await create(api, token, prompt=prompt)
        assert status == 422
        assert body["details"]["fields"][0]["field"] == "prompt"


@pytest.mark.parametrize("prompt", ["a cat\u0000 at night", "a cat \ud800 at night"])
async def test_text_no_database_can_store_is_a_422_not_a_500(api: RunningApi, prompt: str) -> None:
    token, _ = await api.register()
    # json.dumps writes both as \u escapes, as a hostile client would send them.
    status, body, _ = await api.request(
        "POST",
        "/api/videos",
        token=token,
        data=json.dumps({"prompt": prompt}),
        headers={"Content-Type": "application/json"},
    )
    assert status == 422
    assert body["details"]["fields"][0]["field"] == "prompt"
    assert await balance(api, token) == 100


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/videos/%00"),
        ("POST", "/api/videos/a%00b/cancel"),
        ("GET", "/api/videos?status=queued%00"),
    ],
)
async def test_a_nul_in_the_url_is_a_400(api: RunningApi, method: str, path: str) -> None:
    token, _ = await api.register()
    status, body, response = await api.request(method, path, token=token)
    assert status == 400
    assert "NUL" in body["message"]
    assert body["requestId"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seconds", -4),
        ("seconds", 5),
        ("seconds", "4 seconds"),
        ("model", "sora-3"),
        ("size", "640x480"),
        ("colour", "blue"),
    ],
)
async def test_out_of_range_options_are_rejected_naming_the_field(
    api: RunningApi, field: str, value: object
) -> None:
    token, _ = await api.register()
    status, body = await create(api, token, **{field: value})
    assert status == 422
    assert body["details"]["fields"][0]["field"] == field
    assert field in body["message"]
    assert await balance(api, token) == 100  # nothing charged, no free credits either


async def test_not_enough_credits_is_402_with_balance_and_cost(api: RunningApi) -> None:
    token, _ = await api.register()
    await create(api, token, model="sora-2-pro", seconds=12)  # 36
    await create(api, token, model="sora-2-pro", seconds=12)  # 36 → 28 left
    status, body = await create(api, token, model="sora-2-pro", seconds=12)
    assert status == 402
    assert body["details"] == {"balance": 28, "cost": 36}
    assert "36" in body["message"]
    assert "28" in body["message"]
    assert await balance(api, token) == 28


async def test_parallel_creates_never_overdraw(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    parallel = 8
    price = 4
    tight = make_settings(database_url, tmp_path, signup_credits=price * (parallel - 1))
    async with running_api(tight, ScriptedProvider()) as api:
        token, _ = await api.register()
        results = await asyncio.gather(*(create(api, token) for _ in range(parallel)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [202] * (parallel - 1) + [402]
        assert await balance(api, token) == 0
        _, videos, _ = await api.request("GET", "/api/videos?limit=100", token=token)
        assert videos["total"] == parallel - 1


async def test_list_is_newest_first_paged_and_filtered(api: RunningApi) -> None:
    token, _ = await api.register()
    ids = [(await create(api, token, prompt=f"clip {n}"))[1]["id"] for n in range(5)]
    status, page1, _ = await api.request("GET", "/api/videos?page=1&limit=2", token=token)
    assert status == 200
    assert [v["id"] for v in page1["items"]] == ids[::-1][:2]
    assert page1["total"] == 5
    _, page3, _ = await api.request("GET", "/api/videos?page=3&limit=2", token=token)
    assert [v["id"] for v in page3["items"]] == [ids[0]]
    await api.request("POST", f"/api/videos/{ids[1]}/cancel", token=token)
    _, cancelled, _ = await api.request("GET", "/api/videos?status=cancelled", token=token)
    assert [v["id"] for v in cancelled["items"]] == [ids[1]]
    status, body, _ = await api.request("GET", "/api/videos?status=done", token=token)
    assert status == 422
    assert body["details"]["fields"][0]["field"] == "status"


async def test_other_peoples_videos_do_not_exist_for_you(api: RunningApi) -> None:
    owner, _ = await api.register()
    stranger, _ = await api.register()
    _, video = await create(api, owner)
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/cancel"),
        ("POST", "/regenerate"),
        ("GET", "/events"),
        ("GET", "/content"),
        ("GET", "/thumbnail"),
    ]:
        status, body, _ = await api.request(
            method, f"/api/videos/{video['id']}{path}", token=stranger
        )
        assert status == 404, (method, path)
        assert body["error"] == "Not Found"
    assert (await api.request("GET", f"/api/videos/{video['id']}", token=owner))[0] == 200


async def test_cancel_refunds_exactly_once(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token, seconds=12)
    status, cancelled, _ = await api.request(
        "POST", f"/api/videos/{video['id']}/cancel", token=token
    )
    assert status == 200
    assert cancelled["status"] == "cancelled"
    status, body, _ = await api.request("POST", f"/api/videos/{video['id']}/cancel", token=token)
    assert status == 409
    assert body["details"]["status"] == "cancelled"
    assert await balance(api, token) == 100
    assert await ledger(api, token) == [("refund", 12), ("consume", -12), ("gift", 100)]


async def test_concurrent_cancels_refund_once(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token, seconds=8)
    results = await asyncio.gather(
        *(api.request("POST", f"/api/videos/{video['id']}/cancel", token=token) for _ in range(6))
    )
    assert sorted(status for status, _, _ in results) == [200] + [409] * 5
    assert await balance(api, token) == 100
    assert [kind for kind, _ in await ledger(api, token)].count("refund") == 1


async def test_regenerate_makes_a_new_video_and_charges_again(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token, model="sora-2-pro", seconds=4)
    status, again, _ = await api.request(
        "POST", f"/api/videos/{video['id']}/regenerate", token=token
    )
    assert status == 202
    assert again["id"] != video["id"]
    assert (again["prompt"], again["model"], again["seconds"]) == (PROMPT, "sora-2-pro", 4)
    assert await balance(api, token) == 100 - 12 - 12


async def test_deleting_a_queued_video_refunds_it(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token, seconds=8)
    status, _, _ = await api.request("DELETE", f"/api/videos/{video['id']}", token=token)
    assert status == 204
    assert (await api.request("GET", f"/api/videos/{video['id']}", token=token))[0] == 404
    assert await balance(api, token) == 100


async def test_unfinished_video_has_no_content_yet(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video = await create(api, token)
    status, body, _ = await api.request("GET", f"/api/videos/{video['id']}/content", token=token)
    assert status == 409
    assert body["details"] == {"status": "queued"}


async def test_more_creates_at_once_than_database_connections_all_succeed(
    settings: Settings, provider: ScriptedProvider
) -> None:
    """Each create holds one pooled connection (its account is read first) while the generate
    limit is counted: counted on a connection of that same pool, 20 creates at once held all 20
    and each waited for another until the pool's 30 s timeout, then answered 500."""
    rich = settings.model_copy(update={"signup_credits": 10_000})
    async with running_api(rich, provider) as api:
        token, _ = await api.register()
        body = {"prompt": "A crowd of kites", "seconds": 4}

        async def create() -> int:
            status, _, _ = await api.request("POST", "/api/videos", token=token, json=body)
            return status

        creates = asyncio.gather(*(create() for _ in range(40)))
        statuses = await asyncio.wait_for(creates, timeout=20)
    assert statuses.count(202) == 40, statuses
