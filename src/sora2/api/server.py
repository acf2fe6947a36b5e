"""Runs the api under uvicorn."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn

from sora2.api.app import create_app
from sora2.logs import configure_logging
from sora2.settings import Settings

# Longer than the proxy's pooled keep-alive (4 s) so the api never closes a connection the proxy
# is about to reuse: that race would turn a POST into an error the proxy must not retry.
KEEP_ALIVE_SECONDS = 75


def _refuse_pending_migrations(settings: Settings) -> None:
    """Production never migrates on its own: say which command does, before binding the port."""
    from sora2.api.db import Database
    from sora2.api.db.migrate import PendingMigrations, prepare_schema
    from sora2.cli import CommandExit

    async def check() -> None:
        database = Database(settings.resolved_database_url)
        try:
            await prepare_schema(database, apply=False)
        finally:
            await database.dispose()

    try:
        asyncio.run(check())
    except PendingMigrations as error:
        raise CommandExit(f"refusing to start: {error}", 1) from None


def _exit_after_graceful_shutdown(signum: int, _frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM once it has shut down gracefully; dying by the signal would skip
    `atexit`, losing the last half second of buffered log lines (its shutdown lines included)."""
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    configure_logging("api", level=settings.log_level, log_dir=settings.log_dir)
    if settings.is_production:
        _refuse_pending_migrations(settings)
    signal.signal(signal.SIGTERM, _exit_after_graceful_shutdown)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=10,
        loop="uvloop",
        http="httptools",
    )
