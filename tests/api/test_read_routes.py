"""The read routes that skip the ORM session check a signed-in caller exactly as the others do.

Their token is remembered after its first check (see AccessTokens), so these tests first use
each token once, then end its session or suspend its account, and expect an answer at once.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from sora2.api.db import Database
from sora2.api.users.models import User
from tests.api.harness import RunningApi

CREATE = {"prompt": "A kite over a beach", "seconds": 4}


async def _caller_with_a_video(api: RunningApi) -> tuple[str, str, list[str]]:
    token, body = await api.register()
    status, video, _ = await api.request("POST", "/api/videos", token=token, json=CREATE)
    assert status == 202, video
    paths = [
        "/api/videos",
        "/api/videos?status=queued&page=1&limit=5",
        f"/api/videos/{video['id']}",
        f"/api/videos/{video['id']}/content",
        f"/api/videos/{video['id']}/thumbnail",
        "/api/credits/balance",
        "/api/credits/transactions",
        "/api/auth/me",
    ]
    for path in paths:  # each answers the caller (a queued video has no files yet: 409)
        status, _, _ = await api.request("GET", path, token=token)
        assert status in (200, 409), path
    return token, body["user"]["id"], paths


async def test_a_session_ended_by_logout_is_refused_on_every_read_route(api: RunningApi) -> None:
    token, _, paths = await _caller_with_a_video(api)
    status, _, _ = await api.request("POST", "/api/auth/logout", token=token)
    assert status == 200
    for path in paths:
        status, body, _ = await api.request("GET", path, token=token)
        assert (status, body["error"]) == (401, "Unauthorized"), path


async def test_a_suspended_account_is_refused_on_every_read_route(api: RunningApi) -> None:
    token, user_id, paths = await _caller_with_a_video(api)
    database = Database(api.settings.resolved_database_url)
    try:
        async with database.session() as session:
            await session.execute(update(User).where(User.id == user_id).values(status="banned"))
            await session.commit()
    finally:
        await database.dispose()
    for path in paths:
        status, body, _ = await api.request("GET", path, token=token)
        assert status == 403, path
        assert "suspended" in body["message"]


@pytest.mark.parametrize("suffix", ["", "/content", "/thumbnail", "/events"])
async def test_someone_elses_video_does_not_exist_for_you(api: RunningApi, suffix: str) -> None:
    owner, _ = await api.register()
    _, video, _ = await api.request("POST", "/api/videos", token=owner, json=CREATE)
    stranger, _ = await api.register()
    status, body, _ = await api.request("GET", f"/api/videos/{video['id']}{suffix}", token=stranger)
    assert status == 404
    assert body["message"] == "This video does not exist or is not yours."
