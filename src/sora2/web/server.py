"""Runs the web service on aiohttp with uvloop."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvloop
from aiohttp import web

from sora2.logs import configure_logging
from sora2.serving import run_copies
from sora2.settings import Settings
from sora2.web.app import create_app

logger = logging.getLogger("sora2.web")


def serve(settings: Settings, *, workers: int = 1) -> int:
    """Serves the web until SIGTERM/SIGINT; `workers` processes share the port (SO_REUSEPORT)."""

    def serve_one(sock: socket.socket | None, number: int) -> None:
        _serve_process(settings, sock, log_name=f"web-{number}" if number else "web")

    return run_copies(
        serve_one, host=settings.web_host, port=settings.web_port, count=workers, name="web"
    )


def _serve_process(settings: Settings, sock: socket.socket | None, *, log_name: str) -> None:
    configure_logging(log_name, level=settings.log_level, log_dir=settings.log_dir)
    logger.info(
        "web listening on http://%s:%d, proxying /api/proxy to %s (%s)",
        settings.web_host,
        settings.web_port,
        settings.api_url,
        settings.app_env,
    )
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_app(settings),
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
        print=None,
    )
