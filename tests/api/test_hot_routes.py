"""The hot read routes (`sora2.api.hot_routes`) answer what FastAPI's routes answer, byte for
byte, with one statement per read; every other case is still decided by the FastAPI route."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from sora2.api.db import Database
from sora2.api.videos.models import Video
from sora2.settings import Settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, running_api

CREATE = {"prompt": "Ein Drachen über dem Strand — 風", "seconds": 4}


@pytest.fixture
async def plain_api(settings: Settings, provider: ScriptedProvider) -> AsyncIterator[RunningApi]:
    """The same api on the same database with every request left to FastAPI's routes."""
    async with running_api(settings, provider, hot_routes=False) as running:
        yield running


async def _set(settings: Settings, video_id: str, **values: object) -> None:
    database = Database(settings.resolved_database_url)
    try:
        async with database.transaction() as session:
            await session.execute(update(Video).where(Video.id == video_id).values(**values))
    finally:
        await database.dispose()


async def _videos_in_every_shape(api: RunningApi, token: str) -> list[str]:
    """A queued video, a completed one (whole-second timestamps), a failed one with a message,
    a remix that started from an image."""
    ids = []
    for _ in range(4):
        status, body, _ = await api.request("POST", "/api/videos", token=token, json=CREATE)
        assert status == 202, body
        ids.append(body["id"])
    whole_second = datetime(2026, 12, 6, 3, 4, 5, tzinfo=UTC)
    await _set(
        api.settings,
        ids[1],
        status="completed",
        progress=100,
        video_key="videos/x.mp4",
        thumbnail_key="videos/x.jpg",
        video_bytes=123_456,
        started_at=whole_second,
        finished_at=datetime(2026, 12, 6, 3, 4, 9, 400_000, tzinfo=UTC),
    )
    await _set(
        api.settings,
        ids[2],
        status="failed",
        error_code="provider_error",
        error_message="Le modèle a refusé « ça »",
    )
    await _set(api.settings, ids[3], remix_of=ids[1], input_reference_key="references/r.jpg")
    return ids


async def test_hot_answers_are_the_routes_answers_byte_for_byte(
    api: RunningApi, plain_api: RunningApi
) -> None:
    token, _ = await api.register()
    ids = await _videos_in_every_shape(api, token)
    paths = [
        *(f"/api/videos/{video_id}" for video_id in ids),
        "/api/videos",
        "/api/videos?limit=2&page=2",
        "/api/videos?status=completed",
        "/api/videos?status=cancelled",
        "/api/videos?page=9",
        "/api/videos?unknown=1&limit=3",
        "/api/credits/balance",
        "/api/credits/transactions",
        "/api/credits/transactions?limit=1&page=3",
        "/api/auth/me",
        "/api/models",
    ]
    for path in paths:
        hot = await api.http.get(api.url + path, headers={"Authorization": f"Bearer {token}"})
        plain = await plain_api.http.get(
            plain_api.url + path, headers={"Authorization": f"Bearer {token}"}
        )
        assert hot.status == plain.status == 200, path
        assert hot.headers["Content-Type"] == plain.headers["Content-Type"], path
        assert await hot.read() == await plain.read(), path


async def test_the_session_cookie_signs_in_a_hot_read_as_it_does_any_route(
    api: RunningApi,
) -> None:
    _, body = await api.register()  # the jar keeps the session cookie
    status, me, _ = await api.request("GET", "/api/auth/me")
    assert (status, me["id"]) == (200, body["user"]["id"])


async def _statements(api: RunningApi) -> float:
    _, text, _ = await api.request("GET", "/metrics")
    match = re.search(rb"^sora2_api_database_queries_total (\S+)$", text, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


async def test_a_video_read_is_one_statement_session_check_included(api: RunningApi) -> None:
    token, _ = await api.register()
    _, video, _ = await api.request("POST", "/api/videos", token=token, json=CREATE)
    # What a /metrics request itself costs in statements, measured the same way.
    idle = -(await _statements(api)) + await _statements(api)
    before = await _statements(api)
    for _ in range(10):
        status, _, _ = await api.request("GET", f"/api/videos/{video['id']}", token=token)
        assert status == 200
    assert await _statements(api) - before - idle == 10


async def test_refusals_and_odd_queries_are_still_the_routes_own(api: RunningApi) -> None:
    token, _ = await api.register()
    other, _ = await api.register()
    _, video, _ = await api.request("POST", "/api/videos", token=token, json=CREATE)
    status, body, _ = await api.request("GET", f"/api/videos/{video['id']}", token=other)
    assert (status, body["error"]) == (404, "Not Found")
    for query in ("limit=0", "limit=101", "page=x", "status=done", "limit=%C2%B2"):
        status, body, _ = await api.request("GET", f"/api/videos?{query}", token=token)
        assert status == 422, query
    status, body, _ = await api.request("GET", "/api/credits/balance", token="not-a-token")
    assert status == 401
