"""Runs the api under uvicorn: one process, or several on one port (`--workers N`)."""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType

import uvicorn

from sora2.api.app import create_app
from sora2.api.live import LiveProgress
from sora2.logs import configure_logging
from sora2.serving import (
    LISTEN_BACKLOG,
    freeze_startup_objects,
    run_copies,
    tune_garbage_collector,
)
from sora2.settings import Settings

# Longer than the proxy's pooled keep-alive (4 s) so the api never closes a connection the proxy
# is about to reuse: that race would turn a POST into an error the proxy must not retry.
KEEP_ALIVE_SECONDS = 75


class RefusedToStart(Exception):
    """The api will not start as configured; the message says why and what to run."""


def _refuse_pending_migrations(settings: Settings) -> None:
    """Production never migrates on its own: say which command does, before binding the port."""
    from sora2.api.db import Database
    from sora2.api.db.migrate import PendingMigrations, prepare_schema

    async def check() -> None:
        database = Database(settings.resolved_database_url)
        try:
            await prepare_schema(database, apply=False)
        finally:
            await database.dispose()

    try:
        asyncio.run(check())
    except PendingMigrations as error:
        raise RefusedToStart(f"refusing to start: {error}") from None


def _exit_after_graceful_shutdown(signum: int, _frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM once it has shut down gracefully; dying by the signal would skip
    `atexit`, losing the last half second of buffered log lines (its shutdown lines included)."""
    raise SystemExit(0)


def serve(settings: Settings, *, workers: int = 1) -> int:
    """Serves the api until SIGTERM/SIGINT; `workers` processes share the port (SO_REUSEPORT).
    Raises `RefusedToStart` before binding anything when production has pending migrations."""
    if settings.is_production:
        _refuse_pending_migrations(settings)

    def serve_one(sock: socket.socket | None, number: int) -> None:
        _serve_process(settings, sock, log_name=f"api-{number}" if number else "api")

    return run_copies(
        serve_one, host=settings.api_host, port=settings.api_port, count=workers, name="api"
    )


class _Server(uvicorn.Server):
    """Ends the live-progress streams as shutdown begins, once no new connection can come in:
    otherwise a reload or a deploy would wait `timeout_graceful_shutdown` for them."""

    def __init__(self, config: uvicorn.Config, live: LiveProgress) -> None:
        super().__init__(config)
        self.live = live

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        self.live.close()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_objects()


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=10,
        loop="uvloop",
        http="httptools",
        # A burst of viewers opening their streams at once must not overflow the accept queue.
        backlog=LISTEN_BACKLOG,
    )


def _serve_process(settings: Settings, sock: socket.socket | None, *, log_name: str) -> None:
    configure_logging(log_name, level=settings.log_level, log_dir=settings.log_dir)
    signal.signal(signal.SIGTERM, _exit_after_graceful_shutdown)
    tune_garbage_collector()
    app = create_app(settings)
    server = _Server(uvicorn_config(settings, app), app.state.context.live)
    server.run(sockets=[sock] if sock is not None else None)
