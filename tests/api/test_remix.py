"""Remix through the api: a completed video of a model with `remix` becomes a new, charged video
made upstream from the source's provider job; anything else is a 4xx that says why."""

from __future__ import annotations

from typing import Any

from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi
from tests.api.test_worker import until_status, worker_running

PROMPT = "A lighthouse at dusk, gulls circling"


async def make_video(api: RunningApi, token: str, **fields: Any) -> dict[str, Any]:
    status, body, _ = await api.request(
        "POST", "/api/videos", token=token, json={"prompt": PROMPT} | fields
    )
    assert status == 202, body
    return dict(body)


async def remix(
    api: RunningApi, token: str, video_id: str, prompt: str = "the same, in a storm", **kw: Any
) -> tuple[int, dict[str, Any]]:
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video_id}/remix", token=token, json={"prompt": prompt}, **kw
    )
    return status, body


async def balance(api: RunningApi, token: str) -> int:
    _, body, _ = await api.request("GET", "/api/credits/balance", token=token)
    return int(body["balance"])


async def test_a_completed_video_is_remixed_upstream_and_charged_like_a_create(
    catalog_api: RunningApi, provider: ScriptedProvider
) -> None:
    token, _ = await catalog_api.register()
    source = await make_video(catalog_api, token, model="local-draft", seconds=4)
    async with worker_running(catalog_api.settings, provider):
        source = await until_status(catalog_api, token, source["id"], "completed")
        status, remixed = await remix(catalog_api, token, source["id"])
        assert status == 202, remixed
        remixed = await until_status(catalog_api, token, remixed["id"], "completed")

    assert remixed["remixOf"] == source["id"]
    assert source["remixOf"] is None
    assert (remixed["model"], remixed["seconds"], remixed["size"], remixed["cost"]) == (
        "local-draft",
        4,
        "640x360",
        4,
    )
    assert remixed["prompt"] == "the same, in a storm"
    assert await balance(catalog_api, token) == 100 - 4 - 4
    [(first_id, first), (_, second)] = sorted(provider.jobs.items())
    assert first.request.remix is None
    assert second.request.remix is not None
    assert (second.request.remix.job_id, second.request.remix.prompt) == (first_id, PROMPT)


async def test_remix_is_refused_with_the_reason(
    catalog_api: RunningApi, provider: ScriptedProvider
) -> None:
    token, _ = await catalog_api.register()
    other_token, _ = await catalog_api.register()
    queued = await make_video(catalog_api, token, model="local-draft")
    no_remix = await make_video(catalog_api, token, model="veo-3.1")

    status, body = await remix(catalog_api, token, queued["id"])
    assert status == 409
    assert "only a completed video can be remixed" in body["message"]

    async with worker_running(catalog_api.settings, provider):
        await until_status(catalog_api, token, no_remix["id"], "completed")
        await until_status(catalog_api, token, queued["id"], "completed")
    status, body = await remix(catalog_api, token, no_remix["id"])
    assert status == 422
    assert body["message"] == (
        "veo-3.1 does not offer remix (local-draft can); regenerate or make a new video instead."
    )
    status, body = await remix(catalog_api, other_token, queued["id"])
    assert status == 404
    status, body = await remix(catalog_api, token, queued["id"], prompt="  ")
    assert status == 422
    assert body["details"]["fields"][0]["field"] == "prompt"
    assert await balance(catalog_api, token) == 100 - 2 - 8


async def test_a_repeated_remix_with_its_key_is_charged_once(
    catalog_api: RunningApi, provider: ScriptedProvider
) -> None:
    token, _ = await catalog_api.register()
    source = await make_video(catalog_api, token, model="local-draft")
    async with worker_running(catalog_api.settings, provider):
        await until_status(catalog_api, token, source["id"], "completed")
    headers = {"Idempotency-Key": "remix-storm-1"}

    first = await remix(catalog_api, token, source["id"], headers=headers)
    again = await remix(catalog_api, token, source["id"], headers=headers)

    assert first[0] == again[0] == 202
    assert first[1]["id"] == again[1]["id"]
    assert await balance(catalog_api, token) == 100 - 2 - 2
