"""Runs the web service on aiohttp with uvloop."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket

import uvloop
from aiohttp import web

from sora2.logs import configure_logging
from sora2.serving import (
    LISTEN_BACKLOG,
    freeze_startup_objects,
    run_copies,
    tune_garbage_collector,
)
from sora2.settings import Settings
from sora2.web.app import create_app

logger = logging.getLogger("sora2.web")


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's open-file soft limit to its hard limit (each proxied connection
    holds two files, and many systems start processes at a soft limit of 1024); returns the new
    limit. Warns when even the hard limit is below what the configured pool can use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "open-file limit is %d, below the %d the configured load needs (PROXY_POOL_SIZE): "
            "beyond about %d connections, new ones fail. Raise the hard limit (ulimit -Hn, "
            "systemd LimitNOFILE=) or lower PROXY_POOL_SIZE; sora2 doctor checks this.",
            soft,
            needed,
            max(0, (soft - 256) // 2),
        )
    return soft


def serve(settings: Settings, *, workers: int = 1) -> int:
    """Serves the web until SIGTERM/SIGINT; `workers` processes share the port (SO_REUSEPORT)."""

    def serve_one(sock: socket.socket | None, number: int) -> None:
        _serve_process(settings, sock, log_name=f"web-{number}" if number else "web")

    return run_copies(
        serve_one, host=settings.web_host, port=settings.web_port, count=workers, name="web"
    )


def _serve_process(settings: Settings, sock: socket.socket | None, *, log_name: str) -> None:
    configure_logging(log_name, level=settings.log_level, log_dir=settings.log_dir)
    tune_garbage_collector()
    raise_open_file_limit(settings.web_open_files_needed)
    logger.info(
        "web listening on http://%s:%d, proxying /api/proxy to %s (%s)",
        settings.web_host,
        settings.web_port,
        ", ".join(settings.api_urls),
        settings.app_env,
    )
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)  # last: after the proxy's own start-up
    web.run_app(
        app,
        # Given a socket, aiohttp would bind host:port besides: one or the other.
        **(
            {"sock": sock}
            if sock is not None
            else {"host": settings.web_host, "port": settings.web_port}
        ),
        access_log=None,
        # A client that goes away cancels its handler, which cancels the upstream request.
        handler_cancellation=True,
        shutdown_timeout=10,
        # Thousands of viewers reconnect at once after a restart: do not drop their SYNs.
        backlog=LISTEN_BACKLOG,
        print=None,
    )


async def _freeze_startup_objects(_app: web.Application) -> None:
    freeze_startup_objects()
