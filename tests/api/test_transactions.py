"""One owner per transaction: the request's session commits on success and rolls back on error,
so a failure part-way leaves no partial write and a failed commit is never answered as success."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import event, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.db import Base, Database
from sora2.api.idempotency.service import IdempotentRequest
from sora2.api.users.models import User
from sora2.api.videos import service as video_service
from sora2.settings import Settings
from tests.api.conftest import is_postgres
from tests.api.harness import RunningApi, wait_for

PROMPT = "A lighthouse keeper climbs the stairs at dusk"
# Written by the rate limiter in its own short transaction, whatever the answer.
NOT_THE_REQUESTS = {"rate_limit_counters"}
DEAR = {"model": "sora-2-pro", "seconds": 12}  # 36 credits of the 100 a new account gets


async def _snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the requests write, to compare before and after."""
    database = Database(settings.resolved_database_url)
    try:
        async with database.engine.connect() as connection:
            tables = [t for t in Base.metadata.sorted_tables if t.name not in NOT_THE_REQUESTS]
            return {
                table.name: sorted(
                    (tuple(map(str, row)) for row in await connection.execute(table.select())),
                )
                for table in tables
            }
    finally:
        await database.dispose()


async def _video(api: RunningApi, token: str, video_id: str) -> dict[str, Any]:
    status, body, _ = await api.request("GET", f"/api/videos/{video_id}", token=token)
    assert status == 200, body
    return dict(body)


async def _balance(api: RunningApi, token: str) -> int:
    status, body, _ = await api.request("GET", "/api/credits/balance", token=token)
    assert status == 200
    return int(body["balance"])


async def test_a_failure_after_the_refund_leaves_the_video_charged_and_in_place(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a queued video refunds it, then deletes it. When the delete fails after the
    refund was flushed, nothing of it stays (the service used to commit the refund itself)."""
    token, _ = await api.register()
    status, video, _ = await api.request(
        "POST", "/api/videos", token=token, json={"prompt": PROMPT}
    )
    assert status == 202, video
    charged = await _balance(api, token)
    locks = 0
    take_job_lock = video_service._lock_job_first

    async def fail_on_the_second_lock(session: AsyncSession, video_id: str) -> None:
        nonlocal locks
        locks += 1
        if locks == 2:  # after cancel_if_active refunded, before the row is deleted
            raise RuntimeError("the database went away mid-delete")
        await take_job_lock(session, video_id)

    monkeypatch.setattr(video_service, "_lock_job_first", fail_on_the_second_lock)
    status, _, _ = await api.request("DELETE", f"/api/videos/{video['id']}", token=token)
    assert status == 500
    assert locks == 2
    monkeypatch.undo()
    assert (await _video(api, token, video["id"]))["status"] == "queued"
    assert await _balance(api, token) == charged  # not refunded
    status, _, _ = await api.request("DELETE", f"/api/videos/{video['id']}", token=token)
    assert status == 204
    assert await _balance(api, token) == charged + video["cost"]  # refunded once, now


async def test_a_commit_that_fails_is_never_answered_as_success(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = await api.register(nickname="Before")

    async def lost_commit(self: AsyncSession) -> None:
        raise ConnectionResetError("the connection went at commit")

    monkeypatch.setattr(AsyncSession, "commit", lost_commit)
    status, answer, _ = await api.request(
        "PUT", "/api/users/profile", token=token, json={"nickname": "After"}
    )
    monkeypatch.undo()
    assert status >= 500, answer
    status, profile, _ = await api.request("GET", "/api/users/profile", token=token)
    assert profile["nickname"] == "Before"


async def test_refusals_leave_the_database_as_they_found_it(api: RunningApi) -> None:
    token, body = await api.register()
    status, video, _ = await api.request(
        "POST", "/api/videos", token=token, json={"prompt": PROMPT}
    )
    assert status == 202
    for _ in range(2):  # leaves less than a third costs
        status, _, _ = await api.request(
            "POST", "/api/videos", token=token, json={"prompt": PROMPT, **DEAR}
        )
        assert status == 202
    before = await _snapshot(api.settings)
    refusals = [
        # 402 after the key was claimed (a flushed insert) and the price looked up
        (
            "POST",
            "/api/videos",
            {"prompt": PROMPT, **DEAR},
            {"Idempotency-Key": "too-dear-1"},
            402,
        ),
        # 409: the video cannot be remixed yet (key claimed first)
        (
            "POST",
            f"/api/videos/{video['id']}/remix",
            {"prompt": PROMPT},
            {"Idempotency-Key": "remix-1"},
            409,
        ),
        # 400: the current password is wrong (after the early commit before the hash)
        (
            "PUT",
            "/api/users/password",
            {"currentPassword": "not-my-password-1", "newPassword": "another-horse-77"},
            {},
            400,
        ),
        # 409: the email is taken (the insert undone in its savepoint)
        (
            "POST",
            "/api/auth/register",
            {"email": body["user"]["email"], "password": "correct-horse-9", "nickname": "Twin"},
            {},
            409,
        ),
    ]
    for method, path, payload, headers, expected in refusals:
        status, answer, _ = await api.request(
            method, path, token=token, json=payload, headers=headers
        )
        assert status == expected, (path, answer)
    assert await _snapshot(api.settings) == before


async def test_a_lost_idempotency_race_keeps_the_callers_transaction(settings: Settings) -> None:
    """The second of two requests with one key waits for the first, loses the insert in a
    savepoint and replays the first answer; its own earlier writes stand."""
    if not is_postgres(settings):
        pytest.skip("SQLite serialises writers: the insert never races")
    database = Database(settings.resolved_database_url)
    try:
        async with database.transaction() as session:
            user = User(email="racer@example.com", password_hash="x", nickname="Racer")
            session.add(user)
        user_id = user.id

        def keyed(session: AsyncSession) -> IdempotentRequest:
            made = IdempotentRequest.of(
                session, user_id=user_id, key="same-key", method="POST", path="/api/videos"
            )
            assert made is not None
            return made

        async def second() -> Any:
            async with database.transaction() as session:
                await session.execute(
                    update(User).where(User.id == user_id).values(nickname="Second")
                )
                return await keyed(session).claim()  # waits for the first, then replays

        async def waiting_on_a_lock() -> bool:
            async with database.engine.connect() as connection:
                found = await connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                )
                return bool(found.scalar_one() >= 1)

        async with database.transaction() as session:
            first = keyed(session)
            assert await first.claim() is None
            first.complete(202, {"id": "the-first-video"})
            racer = asyncio.create_task(second())
            await wait_for(waiting_on_a_lock, timeout=10)
        replay = await asyncio.wait_for(racer, timeout=10)
        assert replay is not None
        assert replay.status_code == 202
        assert replay.body == b'{"id":"the-first-video"}'
        async with database.read_session() as session:
            nickname = (
                await session.execute(
                    text("SELECT nickname FROM users WHERE id = :id"), {"id": user_id}
                )
            ).scalar_one()
        assert nickname == "Second"
    finally:
        await database.dispose()


async def test_a_transaction_cancelled_mid_statement_frees_the_database_at_once(
    settings: Settings,
) -> None:
    """A task cancelled while its statement runs (a worker stopping, a shutdown) leaves nothing
    locked: the next writer gets in as soon as that statement ends. On SQLite the interrupted
    connection used to linger with its transaction, and its write lock, until the garbage
    collector came by: registering after a worker stopped was a 500 "database is locked"."""
    interrupted = Database(settings.resolved_database_url)
    other = Database(settings.resolved_database_url)
    running = threading.Event()
    if is_postgres(settings):
        slow = "SELECT pg_sleep(0.5)"
    else:
        slow = (
            "WITH RECURSIVE n(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM n "
            "WHERE x < 3000000) SELECT count(*) FROM n"
        )

        def started() -> int:
            running.set()
            return 1

        @event.listens_for(interrupted.engine.sync_engine, "connect")
        def _started_function(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.create_function("started", 0, started)

    async def slow_statement_running() -> bool:
        if not is_postgres(settings):
            return running.is_set()
        async with other.read_session() as session:
            found = await session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'"
                )
            )
            return bool(found.scalar_one())

    claim = text(
        "INSERT INTO workers (id, hostname, pid, started_at, last_seen_at) "
        "VALUES ('the-worker', 'here', :pid, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )

    async def cancelled_mid_statement() -> None:
        async with interrupted.transaction() as session:
            await session.execute(claim, {"pid": 1})
            await session.execute(text(slow))

    try:
        task = asyncio.create_task(cancelled_mid_statement())
        await wait_for(slow_statement_running, timeout=10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with asyncio.timeout(5), other.transaction() as session:
            await session.execute(claim, {"pid": 2})
        async with other.read_session() as session:
            pids = (await session.execute(text("SELECT pid FROM workers"))).scalars().all()
        assert pids == [2]
    finally:
        await interrupted.dispose()
        await other.dispose()
