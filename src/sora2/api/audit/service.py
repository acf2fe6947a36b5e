"""Writing and reading audit rows.

`record` only adds the row to the caller's session: it is committed together with the change it
describes, or not at all, so the log can never claim a change that did not happen, nor miss one.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sora2.api.audit.models import AuditEntry
from sora2.logs import request_id_var


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an admin account (id and email), or an operator at a shell (no id)."""

    label: str
    id: str | None = None

    @classmethod
    def of_user(cls, *, user_id: str, email: str) -> Actor:
        return cls(label=email, id=user_id)

    @classmethod
    def command_line(cls) -> Actor:
        """`cli:alice@host`: the login name and machine of whoever ran `sora2 user …`."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (containers)
            who = "unknown"
        return cls(label=f"cli:{who}@{socket.gethostname()}"[:400])


def current_request_id() -> str:
    """The request's id, or a fresh `cli-…` one outside a request (a command)."""
    request_id = request_id_var.get()
    return request_id if request_id != "-" else f"cli-{uuid.uuid4().hex[:16]}"


def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str,
    reason: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        actor_id=actor.id,
        actor=actor.label,
        action=action,
        target_type=target_type,
        target_id=target_id,
        reason=reason,
        before=before,
        after=after,
        request_id=current_request_id(),
    )
    session.add(entry)
    return entry


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.actor:
            where.append(func.lower(AuditEntry.actor).like(f"%{self.actor.lower()}%"))
        if self.action:
            where.append(AuditEntry.action == self.action)
        if self.target_type:
            where.append(AuditEntry.target_type == self.target_type)
        if self.target_id:
            where.append(AuditEntry.target_id == self.target_id)
        if self.since:
            where.append(AuditEntry.created_at >= self.since)
        if self.until:
            where.append(AuditEntry.created_at < self.until)
        return where


async def list_entries(
    session: AsyncSession, *, where: AuditFilter, page: int, limit: int
) -> tuple[list[AuditEntry], int]:
    conditions = where.conditions()
    total = (
        await session.execute(select(func.count()).select_from(AuditEntry).where(*conditions))
    ).scalar_one()
    rows = (
        await session.execute(
            select(AuditEntry)
            .where(*conditions)
            .order_by(AuditEntry.id.desc())
            .offset((page - 1) * limit)
            .limit(limit)
        )
    ).scalars()
    return list(rows), int(total)
