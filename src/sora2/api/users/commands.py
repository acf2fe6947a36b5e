"""What `sora2 user list | set-role | ban | unban | credits add` do, for operators at a shell.

The command line only parses and prints (`sora2.api.cli`); the work is here, through the same
`admin.service` rules as the admin api, audited with the command line as the actor
(`cli:<login>@<host>`). Errors are `ApiError`s, whose message the command prints.
"""

from __future__ import annotations

from sora2.api.admin import service
from sora2.api.audit.service import Actor
from sora2.api.db import Database
from sora2.api.users.models import User


async def list_users(database: Database, *, search: str | None, limit: int) -> list[User]:
    async with database.read_session() as session:
        users, _total = await service.list_users(session, search=search, page=1, limit=limit)
        return users


async def set_role(database: Database, *, who: str, role: str, reason: str | None) -> User:
    async with database.transaction() as session:
        user = await service.find_user(session, who)
        changed = await service.set_role(
            session, actor=Actor.command_line(), user_id=user.id, role=role, reason=reason
        )
        return changed


async def set_status(database: Database, *, who: str, status: str, reason: str | None) -> User:
    async with database.transaction() as session:
        user = await service.find_user(session, who)
        changed = await service.set_status(
            session, actor=Actor.command_line(), user_id=user.id, status=status, reason=reason
        )
        return changed


async def add_credits(database: Database, *, who: str, amount: int, reason: str) -> User:
    async with database.transaction() as session:
        user = await service.find_user(session, who)
        changed = await service.adjust_credits(
            session, actor=Actor.command_line(), user_id=user.id, amount=amount, reason=reason
        )
        return changed
