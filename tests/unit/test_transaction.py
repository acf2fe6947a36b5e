"""`Database.transaction()`: one owner commits or rolls back, and runs the hooks accordingly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.db import Database
from sora2.api.db import transaction as tx


class Refusal(Exception):
    pass


class StandingRefusal(Exception):
    keep_transaction = True


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    made = Database(f"sqlite+aiosqlite:///{tmp_path / 'tx.db'}")
    async with made.engine.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT NOT NULL)"))
    yield made
    await made.dispose()


async def _notes(database: Database) -> list[str]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(text("SELECT body FROM notes ORDER BY rowid"))
        return [row.body for row in rows]


async def _write(session: AsyncSession, body: str) -> None:
    await session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})


async def test_a_block_that_returns_is_committed_then_its_after_commit_hooks_run(
    database: Database,
) -> None:
    seen: list[list[str]] = []
    undone: list[str] = []

    async def look() -> None:
        seen.append(await _notes(database))  # the commit stands when the hook runs

    async with database.transaction() as session:
        await _write(session, "kept")
        tx.after_commit(session, look)
        tx.on_rollback(session, lambda: undone.append("never"))
    assert seen == [["kept"]]
    assert undone == []


async def test_a_block_that_raises_is_rolled_back_and_only_its_rollback_hooks_run(
    database: Database,
) -> None:
    ran: list[str] = []

    async def block() -> None:
        async with database.transaction() as session:
            await _write(session, "lost")
            tx.after_commit(session, lambda: ran.append("after commit"))
            tx.on_rollback(session, lambda: ran.append("on rollback"))
            raise Refusal

    with pytest.raises(Refusal):
        await block()
    assert await _notes(database) == []
    assert ran == ["on rollback"]


async def test_a_commit_that_fails_raises_and_runs_the_rollback_hooks(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    async def lost_commit(self: AsyncSession) -> None:
        raise ConnectionResetError("the connection went at commit")

    async def block() -> None:
        async with database.transaction() as session:
            await _write(session, "lost")
            tx.after_commit(session, lambda: ran.append("after commit"))
            tx.on_rollback(session, lambda: ran.append("on rollback"))
            monkeypatch.setattr(AsyncSession, "commit", lost_commit)

    with pytest.raises(ConnectionResetError):
        await block()
    monkeypatch.undo()
    assert ran == ["on rollback"]
    assert await _notes(database) == []


async def test_a_refusal_that_keeps_the_transaction_commits_before_it_is_raised(
    database: Database,
) -> None:
    async def block() -> None:
        async with database.transaction() as session:
            await _write(session, "revoked")
            raise StandingRefusal

    with pytest.raises(StandingRefusal):
        await block()
    assert await _notes(database) == ["revoked"]


async def test_the_early_commit_keeps_what_came_before_when_what_follows_fails(
    database: Database,
) -> None:
    ran: list[str] = []

    async def block() -> None:
        async with database.transaction() as session:
            await _write(session, "before")
            tx.after_commit(session, lambda: ran.append("first commit"))
            await tx.end_before_slow_work(session)
            assert ran == ["first commit"]
            await _write(session, "after")
            tx.on_rollback(session, lambda: ran.append("second rolled back"))
            raise Refusal

    with pytest.raises(Refusal):
        await block()
    assert await _notes(database) == ["before"]
    assert ran == ["first commit", "second rolled back"]


async def test_a_failing_hook_does_not_undo_or_hide_the_commit(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("the poller is away")

    async with database.transaction() as session:
        await _write(session, "kept")
        tx.after_commit(session, broken)
        tx.after_commit(session, lambda: ran.append("next hook"))
    assert await _notes(database) == ["kept"]
    assert ran == ["next hook"]
    assert "hook run after commit failed" in caplog.text
