"""The api's commands: `sora2 db upgrade|check`, the worker process, and `sora2 user create|list|
set-role|ban|unban|credits add`, `sora2 models` (their work is in `sora2.api.users.commands`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sora2.commands import CommandExit, Commands, settings_or_exit

T = TypeVar("T")


def register(commands: Commands) -> None:
    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply pending migrations").set_defaults(
        handler=_db_upgrade
    )
    check = db_commands.add_parser("check", help="exit 1 when migrations are pending")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_db_check)

    user = commands.add_parser("user", help="manage accounts")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create = user_commands.add_parser("create", help="create an account (e.g. the first admin)")
    create.add_argument("--email", required=True)
    create.add_argument(
        "--password",
        help="omit it to be asked for it (or pipe it on stdin): then it stays out of your "
        "shell history and the process list",
    )
    create.add_argument("--nickname", required=True)
    create.add_argument("--admin", action="store_true", help="give the account the admin role")
    create.set_defaults(handler=_user_create)
    _register_user_admin(user_commands)

    models = commands.add_parser(
        "models", help="list the model catalog and ask each provider whether it answers"
    )
    models.set_defaults(handler=_models)


def _register_user_admin(user_commands: Commands) -> None:
    """`sora2 user list | set-role | ban | unban | credits add` (work in `api.users.commands`)."""
    listing = user_commands.add_parser("list", help="list accounts, newest first")
    listing.add_argument("--search", help="part of an email or nickname")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-100)")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(handler=_user_list)
    who = "the account's id or email"
    role = user_commands.add_parser("set-role", help="make an account an admin, or a user again")
    role.add_argument("user", help=who)
    role.add_argument("role", choices=["user", "admin"])
    role.add_argument("--reason", help="kept in the audit log")
    role.set_defaults(handler=_user_set_role)
    for action, status, text in (
        ("ban", "banned", "suspend an account and end its sessions"),
        ("unban", "active", "reinstate a suspended account"),
    ):
        parser = user_commands.add_parser(action, help=text)
        parser.add_argument("user", help=who)
        parser.add_argument("--reason", help="kept in the audit log")
        parser.set_defaults(handler=_user_set_status, status=status)
    credits = user_commands.add_parser("credits", help="adjust an account's credits")
    credits_commands = credits.add_subparsers(
        dest="credits_command", required=True, metavar="ACTION"
    )
    add = credits_commands.add_parser("add", help="add credits (a negative amount removes)")
    add.add_argument("user", help=who)
    add.add_argument("amount", type=int, help="credits to add, e.g. 50 or -20")
    add.add_argument("--reason", required=True, help="shown to the user in their ledger")
    add.set_defaults(handler=_user_credits_add)


def serve_worker(_args: argparse.Namespace) -> int:
    """`sora2 serve worker`: one worker process (several may share a PostgreSQL database)."""
    from sora2.api.db.migrate import PendingMigrations
    from sora2.api.jobs.worker import run_worker_process
    from sora2.logs import configure_logging

    settings = settings_or_exit()
    configure_logging("worker", level=settings.log_level, log_dir=settings.log_dir)
    try:
        asyncio.run(run_worker_process(settings))
    except PendingMigrations as error:
        raise CommandExit(str(error), 1) from None
    return 0


def _models(_args: argparse.Namespace) -> int:
    """`sora2 models`: exit 1 when the catalog is invalid or a provider does not answer."""
    from concurrent.futures import ThreadPoolExecutor

    from sora2.api.catalog.probe import describe, probe
    from sora2.catalog import CatalogError, load_catalog

    settings = settings_or_exit()
    try:
        catalog = load_catalog(settings)
    except CatalogError as error:
        raise CommandExit(str(error), 1) from None
    providers = catalog.used_providers()
    with ThreadPoolExecutor(max_workers=max(1, len(providers))) as pool:
        answers = dict(zip((p.name for p in providers), pool.map(probe, providers), strict=True))
    print("\n".join(describe(catalog, answers)))
    return 0 if all(answer.ok for answer in answers.values()) else 1


def _db_upgrade(_args: argparse.Namespace) -> int:
    from sora2.api.db import Database
    from sora2.api.db.migrate import pending_migrations, upgrade

    settings = settings_or_exit()

    async def run() -> list[str]:
        database = Database(settings.resolved_database_url)
        try:
            pending = await pending_migrations(database)
            await upgrade(database)
            return pending
        finally:
            await database.dispose()

    applied = _run_db(run)
    print(
        f"applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else "; up to date")
    )
    return 0


def _db_check(args: argparse.Namespace) -> int:
    from sora2.api.db import Database
    from sora2.api.db.migrate import UPGRADE_COMMAND, pending_migrations

    settings = settings_or_exit()

    async def run() -> list[str]:
        database = Database(settings.resolved_database_url)
        try:
            return await pending_migrations(database)
        finally:
            await database.dispose()

    try:
        pending = _run_db(run)
    except CommandExit as error:
        if not args.json:
            raise
        fix = "check DATABASE_URL and that the database server is running"
        print(
            json.dumps({"reachable": False, "upToDate": False, "message": str(error), "fix": fix})
        )
        return 1
    message = (
        f"{len(pending)} pending migration(s): {', '.join(pending)}; run `{UPGRADE_COMMAND}`"
        if pending
        else "database schema is up to date"
    )
    if args.json:
        document = {
            "reachable": True,
            "upToDate": not pending,
            "pending": pending,
            "message": message,
            "fix": UPGRADE_COMMAND if pending else None,
        }
        print(json.dumps(document))
    else:
        print(message)
    return 1 if pending else 0


def _user_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sora2.api.audit.service import Actor, record
    from sora2.api.auth.schemas import RegisterIn
    from sora2.api.auth.security import Passwords
    from sora2.api.auth.service import create_user
    from sora2.api.db import Database
    from sora2.api.db.migrate import prepare_schema
    from sora2.api.errors import ApiError

    settings = settings_or_exit()
    try:
        password = args.password if args.password is not None else _read_password()
        body = RegisterIn(email=args.email, password=password, nickname=args.nickname)
    except ValidationError as error:
        problems = "; ".join(
            f"--{e['loc'][0]}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise CommandExit(problems) from None

    async def run() -> str:
        database = Database(settings.resolved_database_url)
        try:
            await prepare_schema(database, apply=not settings.is_production)
            async with database.transaction() as session:
                user = await create_user(
                    session,
                    passwords=Passwords(memory_kib=settings.password_hash_memory_kib),
                    email=body.email,
                    password=body.password,
                    nickname=body.nickname,
                    signup_credits=settings.signup_credits,
                    role="admin" if args.admin else "user",
                )
                record(
                    session,
                    actor=Actor.command_line(),
                    action="user.create",
                    target_type="user",
                    target_id=user.id,
                    after={"email": user.email, "role": user.role, "credits": user.credits},
                )
                return user.id
        finally:
            await database.dispose()

    try:
        user_id = _run_db(run)
    except ApiError as error:
        raise CommandExit(error.message, 1) from None
    print(f"created {'admin' if args.admin else 'user'} {body.email} (id {user_id})")
    return 0


def _with_database(work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Runs `work(database)` on a checked schema; an `ApiError` becomes the command's message."""
    from sora2.api.db import Database
    from sora2.api.db.migrate import prepare_schema
    from sora2.api.errors import ApiError

    settings = settings_or_exit()

    async def run() -> T:
        database = Database(settings.resolved_database_url)
        try:
            await prepare_schema(database, apply=not settings.is_production)
            return await work(database)
        finally:
            await database.dispose()

    try:
        return _run_db(run)
    except ApiError as error:
        raise CommandExit(error.message, 1) from None


def _describe(user: Any) -> str:
    return (
        f"{user.id}  {user.email}  {user.role}  {user.status}  {user.credits} credits  "
        f"{user.nickname}"
    )


def _user_list(args: argparse.Namespace) -> int:
    from sora2.api.users import commands

    if not 1 <= args.limit <= 100:
        raise CommandExit("--limit must be between 1 and 100")
    users = _with_database(lambda db: commands.list_users(db, search=args.search, limit=args.limit))
    for user in users:
        if args.json:
            print(
                json.dumps(
                    {
                        "id": user.id,
                        "email": user.email,
                        "nickname": user.nickname,
                        "role": user.role,
                        "status": user.status,
                        "credits": user.credits,
                        "createdAt": user.created_at.isoformat(),
                    }
                )
            )
        else:
            print(_describe(user))
    return 0


def _user_set_role(args: argparse.Namespace) -> int:
    from sora2.api.users import commands

    user = _with_database(
        lambda db: commands.set_role(db, who=args.user, role=args.role, reason=args.reason)
    )
    print(f"{user.email} is now {user.role}")
    return 0


def _user_set_status(args: argparse.Namespace) -> int:
    from sora2.api.users import commands

    user = _with_database(
        lambda db: commands.set_status(db, who=args.user, status=args.status, reason=args.reason)
    )
    print(f"{user.email} is now {user.status}")
    return 0


def _user_credits_add(args: argparse.Namespace) -> int:
    from sora2.api.users import commands

    reason = args.reason.strip()
    if not 1 <= len(reason) <= 200:
        raise CommandExit("--reason must be 1 to 200 characters")
    if not -1_000_000 <= args.amount <= 1_000_000:
        raise CommandExit("the amount must be between -1000000 and 1000000")
    user = _with_database(
        lambda db: commands.add_credits(db, who=args.user, amount=args.amount, reason=reason)
    )
    print(f"{user.email} now has {user.credits} credits")
    return 0


def _run_db(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs database work, turning an unreachable database into a message naming the URL's host."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        return asyncio.run(work())
    except (OSError, OperationalError, DBAPIError) as error:
        settings = settings_or_exit()
        url = make_url(settings.resolved_database_url)
        where = (
            url.database if url.get_backend_name() == "sqlite" else f"{url.host}:{url.port or 5432}"
        )
        raise CommandExit(
            f"cannot use the database ({url.get_backend_name()} at {where}): "
            f"{type(error).__name__}; "
            "check DATABASE_URL and that the server is running",
            1,
        ) from None


def _read_password() -> str:
    """From a prompt that does not echo, or the first line of stdin when it is not a terminal."""
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")
