"""Nothing waits or loops forever, and the errors that were 500s only on PostgreSQL: a job whose
worker keeps dying, a huge `Retry-After`, a video past its deadline, a balance past 2^31, an email
that grows when lower-cased, an unexpected exception's name shown to the user."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import update

from sora2.api.db import Database
from sora2.api.jobs.queue import JobQueue
from sora2.api.providers.base import ErrorKind, ProviderError
from sora2.api.users.models import User
from sora2.settings import Settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import PASSWORD, RunningApi, wait_for
from tests.api.test_videos import PROMPT, balance, create, ledger
from tests.api.test_worker import until_status, video_of, worker_running


async def test_a_job_whose_worker_keeps_dying_fails_and_is_refunded(
    api: RunningApi, settings: Settings
) -> None:
    """Reported: a job whose worker dies is reclaimed forever, its credits held."""
    token, _ = await api.register()
    _, video = await create(api, token)
    database = Database(settings.resolved_database_url)
    try:
        # Workers that claim the job and die (their leases simply run out), one after another.
        queue = JobQueue(database, worker_id="doomed", lease_seconds=0.5, max_attempts=3)
        claims = 0

        async def claimed_or_failed() -> bool:
            nonlocal claims
            if await queue.claim() is not None:
                claims += 1
            return bool((await video_of(api, token, video["id"]))["status"] == "failed")

        await wait_for(claimed_or_failed, timeout=15, interval=0.05)
    finally:
        await database.dispose()
    assert claims == 3
    failed = await video_of(api, token, video["id"])
    assert failed["errorCode"] == "worker_lost"
    assert "refunded" in failed["errorMessage"]
    assert await ledger(api, token) == [("refund", 4), ("consume", -4), ("gift", 100)]


async def test_a_huge_retry_after_is_capped(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    """Reported: `Retry-After: 1e11` parked a job until the year 5196."""
    capped = settings.model_copy(update={"job_retry_after_max_seconds": 0.05})
    provider.status_errors = [
        ProviderError(ErrorKind.TRANSIENT, "server_error", "503", retry_after=1e11),
        ProviderError(ErrorKind.RATE_LIMITED, "all_keys_resting", "429", retry_after=1e11),
    ]
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(capped, provider):
        done = await until_status(api, token, video["id"], "completed", "failed", timeout=15)
    assert done["status"] == "completed"
    assert provider.starts[PROMPT] == 1


async def test_a_video_past_its_deadline_fails_is_refunded_and_stopped_upstream(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    provider.hold = asyncio.Event()  # upstream never finishes
    short = settings.model_copy(update={"job_deadline_seconds": 1.0})
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(short, provider):
        failed = await until_status(api, token, video["id"], "failed", timeout=15)

        async def stopped_upstream() -> bool:
            return provider.cancelled == ["job_1"]

        await wait_for(stopped_upstream)
    assert failed["errorCode"] == "deadline_exceeded"
    assert await balance(api, token) == 100


async def test_an_unexpected_error_shows_a_plain_message_and_a_reference(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    limited = settings.model_copy(update={"job_max_attempts": 1})

    async def broken_download(job_id: str, video: Path, thumbnail: Path) -> None:
        raise KeyError("secret-internal-detail")

    provider.download = broken_download  # type: ignore[method-assign]
    token, _ = await api.register()
    _, video = await create(api, token)
    async with worker_running(limited, provider):
        failed = await until_status(api, token, video["id"], "failed", timeout=15)
    assert failed["errorCode"] == "internal_error"
    assert "KeyError" not in failed["errorMessage"]
    assert "secret-internal-detail" not in failed["errorMessage"]
    assert f"video-{video['id']}" in failed["errorMessage"]


async def _make_admin(settings: Settings, user_id: str, **values: object) -> None:
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            await session.execute(update(User).where(User.id == user_id).values(**values))
            await session.commit()
    finally:
        await database.dispose()


async def test_a_balance_past_two_to_the_31_is_an_ordinary_number(
    api: RunningApi, settings: Settings
) -> None:
    """Reported: a 32-bit `users.credits` made a balance past 2^31 a 500 on PostgreSQL."""
    token, body = await api.register()
    user_id = body["user"]["id"]
    await _make_admin(settings, user_id, role="admin", credits=2**31 - 10)
    status, user, _ = await api.request(
        "POST",
        f"/api/admin/users/{user_id}/credits",
        token=token,
        json={"amount": 1_000_000, "reason": "big spender"},
    )
    assert status == 200, user
    assert user["credits"] == 2**31 - 10 + 1_000_000
    status, _ = await create(api, token)
    assert status == 202
    assert await balance(api, token) == 2**31 - 10 + 1_000_000 - 4


async def test_an_email_that_grows_when_lower_cased_is_refused_by_name(api: RunningApi) -> None:
    """'İ' lower-cases to two characters: 300 of them fit the 320 limit as typed, not after."""
    email = "a@" + "İ" * 300 + ".com"
    status, body, _ = await api.request(
        "POST",
        "/api/auth/register",
        json={"email": email, "password": PASSWORD, "nickname": "Tall"},
    )
    assert status == 422, body
    assert "email" in str(body)
    assert "320" in str(body)
