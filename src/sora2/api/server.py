"""Runs the api under uvicorn."""

from __future__ import annotations

import uvicorn

from sora2.api.app import create_app
from sora2.logs import configure_logging
from sora2.settings import Settings

# Longer than the proxy's pooled keep-alive (4 s) so the api never closes a connection the proxy
# is about to reuse: that race would turn a POST into an error the proxy must not retry.
KEEP_ALIVE_SECONDS = 75


def serve(settings: Settings) -> None:
    configure_logging("api", level=settings.log_level, log_dir=settings.log_dir)
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
