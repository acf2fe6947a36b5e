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


@pytest.mark.parametrize("route", ["", "/events"])
async def test_a_video_read_is_one_statement_session_check_included(
    api: RunningApi, route: str
) -> None:
    token, _ = await api.register()
    _, video, _ = await api.request("POST", "/api/videos", token=token, json=CREATE)
    await _set(api.settings, video["id"], status="failed")  # its event stream ends at once
    # What a /metrics request itself costs in statements, measured the same way.
    idle = -(await _statements(api)) + await _statements(api)
    before = await _statements(api)
    for _ in range(10):
        status, _, _ = await api.request("GET", f"/api/videos/{video['id']}{route}", token=token)
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


_WRITTEN_AT = {"id", "video_id", "created_at", "updated_at", "run_after", "balance_after"}


async def _rows_of(settings: Settings, video_id: str) -> list[dict[str, object]]:
    """The video's row, its job's and its ledger row's, without ids and times."""
    from sqlalchemy import select

    from sora2.api.credits.models import CreditTransaction
    from sora2.api.jobs.models import Job

    database = Database(settings.resolved_database_url)
    try:
        async with database.read_connection() as connection:
            found = []
            for table, column in (
                (Video.__table__, Video.id),
                (Job.__table__, Job.video_id),
                (CreditTransaction.__table__, CreditTransaction.video_id),
            ):
                row = (await connection.execute(select(table).where(column == video_id))).one()
                found.append({k: v for k, v in row._asdict().items() if k not in _WRITTEN_AT})
            return found
    finally:
        await database.dispose()


async def test_a_hot_create_answers_and_writes_what_the_route_does(
    api: RunningApi, plain_api: RunningApi
) -> None:
    token, _ = await api.register()
    answers = []
    for running in (api, plain_api):
        status, body, _ = await running.request("POST", "/api/videos", token=token, json=CREATE)
        assert status == 202, body
        answers.append(body)
    hot, plain = answers
    ids = [hot["id"], plain["id"]]
    assert list(hot) == list(plain)  # the same fields in the same order
    assert plain["balance"] == hot["balance"] - hot["cost"]
    for name in ("id", "createdAt", "updatedAt", "balance"):
        del hot[name], plain[name]
    assert hot == plain
    hot_rows = await _rows_of(api.settings, ids[0])
    assert hot_rows == await _rows_of(api.settings, ids[1])


_PER_EXCHANGE = {"date", "x-request-id", "server"}


async def _exchange(running: RunningApi, path: str, headers: dict[str, str]) -> tuple[object, ...]:
    async with running.http.get(running.url + path, headers=headers) as response:
        kept = sorted((k.lower(), v) for k, v in response.headers.items())
        kept = [(k, v) for k, v in kept if k not in _PER_EXCHANGE]
        body = await response.read()
    if b"requestId" in body:  # an error: its request id is per exchange
        body = re.sub(rb'"requestId":"[^"]*"', b"", body)
    return response.status, kept, body


async def test_files_and_finished_event_streams_are_served_as_the_routes_serve_them(
    api: RunningApi, plain_api: RunningApi
) -> None:
    from sora2.api.context import media_storage

    token, _ = await api.register()
    ids = await _videos_in_every_shape(api, token)
    storage = media_storage(api.settings)
    await storage.put_bytes("videos/x.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    await storage.put_bytes("videos/x.jpg", b"\xff\xd8\xff\xe0" + b"jpeg" * 100)
    completed, queued, failed = ids[1], ids[0], ids[2]
    auth = {"Authorization": f"Bearer {token}"}
    cases = [
        (f"/api/videos/{completed}/content", auth),
        (f"/api/videos/{completed}/content", auth | {"Range": "bytes=0-1023"}),
        (f"/api/videos/{completed}/content", auth | {"Range": "bytes=99999-"}),
        (f"/api/videos/{completed}/content", auth | {"Range": "lines=1-2"}),
        (f"/api/videos/{completed}/content?download=1", auth),
        (f"/api/videos/{completed}/thumbnail", auth),
        (f"/api/videos/{queued}/thumbnail", auth),
        (f"/api/videos/{completed}/events", auth),
        (f"/api/videos/{failed}/events", auth),
        (f"/api/videos/{completed}/events", auth | {"Last-Event-ID": "completed-100-done"}),
        (f"/api/videos/{completed}/events", {"Authorization": "Bearer nope"}),
    ]
    for path, headers in cases:
        hot = await _exchange(api, path, headers)
        assert hot == await _exchange(plain_api, path, headers), (path, headers)
    assert hot[0] == 401  # the last case: refusals are the route's own


async def test_a_hot_keyed_create_is_replayed_by_the_route_as_its_own(
    api: RunningApi, plain_api: RunningApi
) -> None:
    """The key's record the hot create keeps is the one the route keeps: a repeat through
    either path answers the first video, charged once."""
    token, _ = await api.register()
    headers = {"Idempotency-Key": "hot-key-1"}
    status, first, _ = await api.request(
        "POST", "/api/videos", token=token, json=CREATE, headers=headers
    )
    assert status == 202, first
    for running in (api, plain_api):
        status, again, response = await running.request(
            "POST", "/api/videos", token=token, json=CREATE, headers=headers
        )
        assert (status, again) == (202, first)
        assert response.headers["Idempotent-Replayed"] == "true"
    status, other, _ = await api.request(
        "POST", "/api/videos", token=token, json=CREATE | {"seconds": 8}, headers=headers
    )
    assert status == 422, other  # the same key for another request
    assert other["details"] == {"header": "Idempotency-Key"}
    _, page, _ = await api.request("GET", "/api/credits/transactions", token=token)
    assert [item["type"] for item in page["items"]] == ["consume", "gift"]
