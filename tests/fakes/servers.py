"""Running an aiohttp application on a real loopback socket, for tests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_app(
    app: web.Application, port: int = 0, *, handler_cancellation: bool = True
) -> RunningServer:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningServer(runner, bound)


@asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[RunningServer]:
    server = await start_app(app, port)
    try:
        yield server
    finally:
        await server.stop()
