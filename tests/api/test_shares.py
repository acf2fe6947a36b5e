"""Share links: made for completed videos, opened by anyone, revoked by the owner or by delete."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import select

from sora2.api.db import Database
from sora2.api.shares.models import VideoShare
from sora2.settings import Settings
from tests.api.conftest import empty_tables, make_settings
from tests.api.fake_provider import FAKE_JPEG, FAKE_MP4, ScriptedProvider
from tests.api.harness import RunningApi, running_api
from tests.api.test_videos import create
from tests.api.test_worker import until_status, worker_running

SHARED_ROUTES = ("", "/content", "/thumbnail")


async def completed_video(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> tuple[str, dict[str, Any]]:
    token, _ = await api.register()
    _, video = await create(api, token, seconds=8, size="720x1280")
    async with worker_running(settings, provider):
        done = await until_status(api, token, video["id"], "completed")
    return token, done


async def share(api: RunningApi, token: str, video_id: str) -> tuple[int, Any]:
    status, body, _ = await api.request("POST", f"/api/videos/{video_id}/share", token=token)
    return status, body


async def public_statuses(api: RunningApi, share_token: str) -> list[int]:
    return [
        (await api.request("GET", f"/api/shared/{share_token}{suffix}"))[0]
        for suffix in SHARED_ROUTES
    ]


async def test_anyone_with_the_link_sees_the_video_and_nothing_of_its_owner(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    owner, video = await completed_video(api, settings, provider)
    status, made = await share(api, owner, video["id"])
    assert status == 201, made
    assert made["url"] == f"http://app.example:3200/s/{made['token']}"
    assert len(made["token"]) >= 40
    api.http.cookie_jar.clear()
    status, shared, response = await api.request("GET", f"/api/shared/{made['token']}")
    assert status == 200
    assert shared == {
        "prompt": video["prompt"],
        "model": "sora-2",
        "seconds": 8,
        "size": "720x1280",
        "createdAt": video["createdAt"],
        "contentUrl": f"/api/shared/{made['token']}/content",
        "thumbnailUrl": f"/api/shared/{made['token']}/thumbnail",
    }
    assert "no-cache" in response.headers["Cache-Control"]
    status, content, _ = await api.request("GET", shared["contentUrl"])
    assert (status, content) == (200, FAKE_MP4)
    status, part, response = await api.request(
        "GET", shared["contentUrl"], headers={"Range": "bytes=10-19"}
    )
    assert (status, part) == (206, FAKE_MP4[10:20])
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(FAKE_MP4)}"
    outside = {"Range": f"bytes={len(FAKE_MP4) + 5}-"}
    assert (await api.request("GET", shared["contentUrl"], headers=outside))[0] == 416
    malformed = {"Range": "lines=1"}
    assert (await api.request("GET", shared["contentUrl"], headers=malformed))[0] == 400
    status, thumb, _ = await api.request("GET", shared["thumbnailUrl"])
    assert (status, thumb) == (200, FAKE_JPEG)
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            hashes = list((await session.execute(select(VideoShare.token_hash))).scalars())
    finally:
        await database.dispose()
    assert hashes == [hashlib.sha256(made["token"].encode()).hexdigest()]


async def test_only_the_owner_shares_and_only_a_completed_video(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    owner, video = await completed_video(api, settings, provider)
    stranger, _ = await api.register()
    assert (await share(api, stranger, video["id"]))[0] == 404
    assert (await api.request("DELETE", f"/api/videos/{video['id']}/share", token=stranger))[
        0
    ] == 404
    _, queued = await create(api, owner)
    status, body = await share(api, owner, queued["id"])
    assert (status, body["details"]["status"]) == (409, "queued")


async def test_a_new_link_or_revoke_ends_the_old_one(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    owner, video = await completed_video(api, settings, provider)
    path = f"/api/videos/{video['id']}/share"
    _, state, _ = await api.request("GET", path, token=owner)
    assert state == {"shared": False, "createdAt": None}
    _, first = await share(api, owner, video["id"])
    _, second = await share(api, owner, video["id"])
    assert first["token"] != second["token"]
    assert await public_statuses(api, first["token"]) == [404, 404, 404]
    assert await public_statuses(api, second["token"]) == [200, 200, 200]
    _, state, _ = await api.request("GET", path, token=owner)
    assert state["shared"] is True
    assert (await api.request("DELETE", path, token=owner))[0] == 204
    assert await public_statuses(api, second["token"]) == [404, 404, 404]
    _, state, _ = await api.request("GET", path, token=owner)
    assert state["shared"] is False
    status, body, _ = await api.request("GET", "/api/shared/made-up-token")
    assert (status, body["error"]) == (404, "Not Found")


async def test_deleting_the_video_revokes_its_link(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    owner, video = await completed_video(api, settings, provider)
    _, made = await share(api, owner, video["id"])
    assert (await api.request("DELETE", f"/api/videos/{video['id']}", token=owner))[0] == 204
    assert await public_statuses(api, made["token"]) == [404, 404, 404]


async def test_shared_routes_are_rate_limited_per_address(
    database_url: str, tmp_path: Path, provider: ScriptedProvider
) -> None:
    settings = make_settings(database_url, tmp_path, share_limit_per_ip=3)
    await empty_tables(settings.resolved_database_url)
    async with running_api(settings, provider) as api:
        statuses = [(await api.request("GET", "/api/shared/whatever"))[0] for _ in range(4)]
        assert statuses == [404, 404, 404, 429]
