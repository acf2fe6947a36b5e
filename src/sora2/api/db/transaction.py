"""One owner per transaction: it commits on success, rolls back on error, and runs the hooks.

The owners are few and named: a request's session (`deps.get_session`, for POST, PUT, PATCH and
DELETE), and `Database.transaction()` for the worker, the outbox drain and the CLI. Everything
else (services, queue steps, idempotency keys) only adds and flushes in the session it is given.

Work that must happen only once the commit stands (waking the live-progress poller, sending a
mail, deleting files the rows named) is registered with `after_commit`; work that undoes a side
effect of a transaction that did not commit (a stored image no row will name) with `on_rollback`.
A hook that fails is logged: the commit it follows stands either way.

`end_before_slow_work` is the one deliberate early commit, see there. An error whose
`keep_transaction` is true (a refusal whose writes must stand, such as revoking a session whose
refresh token was reused) is raised after the commit instead of rolling it back.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None] | None]
_HOOKS = "sora2.transaction_hooks"


@dataclass
class _Hooks:
    after_commit: list[Hook] = field(default_factory=list)
    on_rollback: list[Hook] = field(default_factory=list)

    def take(self) -> tuple[list[Hook], list[Hook]]:
        taken = (self.after_commit, self.on_rollback)
        self.after_commit, self.on_rollback = [], []
        return taken


def _hooks(session: AsyncSession) -> _Hooks:
    hooks = session.info.get(_HOOKS)
    if not isinstance(hooks, _Hooks):
        hooks = session.info[_HOOKS] = _Hooks()
    return hooks


def after_commit(session: AsyncSession, hook: Hook) -> None:
    """Run `hook` once the transaction in progress has committed (never if it rolls back)."""
    _hooks(session).after_commit.append(hook)


def on_rollback(session: AsyncSession, hook: Hook) -> None:
    """Run `hook` if the transaction in progress rolls back (never once it has committed)."""
    _hooks(session).on_rollback.append(hook)


async def _run(hooks: list[Hook], when: str) -> None:
    for hook in hooks:
        try:
            outcome = hook()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("a hook run %s failed; the transaction's outcome stands", when)


async def commit(session: AsyncSession) -> None:
    """Commits, then runs the after-commit hooks; on a failed commit, rolls back (and its hooks)."""
    try:
        await session.commit()
    except BaseException:
        await rollback(session)
        raise
    done, _undone = _hooks(session).take()
    await _run(done, "after commit")


async def rollback(session: AsyncSession) -> None:
    """Rolls back (a connection already lost counts as rolled back), then the rollback hooks."""
    _done, undone = _hooks(session).take()
    try:
        await session.rollback()
    except Exception:
        log.warning("rollback failed (the connection is gone; nothing was committed)")
    await _run(undone, "after rollback")


async def end_before_slow_work(session: AsyncSession) -> None:
    """THE deliberate early commit: ends the transaction before slow work (a password hash takes
    a quarter of a second by design) so that no row lock, no pooled connection and, on SQLite,
    not the one write lock is held through it. What was read stays loaded (sessions do not
    expire on commit); what follows runs in a new transaction that the owner commits as usual."""
    await commit(session)


@asynccontextmanager
async def owned(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """Owns `session`'s transaction: commit if the block returns, roll back if it raises."""
    try:
        yield session
    except BaseException as error:
        if getattr(error, "keep_transaction", False):
            await commit(session)
        else:
            await rollback(session)
        raise
    await commit(session)
