"""Running the real api (uvicorn on an ephemeral loopback port) and talking to it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvicorn

from sora2.api.app import create_app
from sora2.api.providers.base import VideoProvider
from sora2.settings import Settings

PASSWORD = "correct-horse-9"


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Polls `condition` until it holds; fails the test when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@dataclass
class RunningApi:
    url: str
    settings: Settings
    server: uvicorn.Server
    http: aiohttp.ClientSession

    async def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            raw = await response.read()
            body: Any = raw
            if response.content_type == "application/json":
                body = await response.json()
            return response.status, body, response

    async def register(
        self, *, credits_hint: str = "", **fields: str
    ) -> tuple[str, dict[str, Any]]:
        """A new account; returns its access token and the response body."""
        payload = {
            "email": f"u{uuid.uuid4().hex[:12]}{credits_hint}@example.com",
            "password": PASSWORD,
            "nickname": "Tester",
        } | fields
        status, body, _ = await self.request("POST", "/api/auth/register", json=payload)
        assert status == 201, body
        return body["accessToken"], body


@asynccontextmanager
async def running_api(
    settings: Settings, provider: VideoProvider, *, hot_routes: bool = True
) -> AsyncIterator[RunningApi]:
    app = create_app(settings, provider=provider, hot_routes=hot_routes)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    # Signals stay pytest's: the server is stopped through should_exit.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # surfaces a start-up failure
        return server.started

    await wait_for(started, timeout=20)
    port = server.servers[0].sockets[0].getsockname()[1]
    # Cookies of any host are kept (the api is reached as 127.0.0.1).
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        try:
            yield RunningApi(f"http://127.0.0.1:{port}", settings, server, http)
        finally:
            server.should_exit = True
            await task


async def promote_to_admin(settings: Settings, user_id: str) -> None:
    """Gives an account the admin role, as `sora2 user set-role` would (without the audit row)."""
    from sqlalchemy import update

    from sora2.api.db import Database
    from sora2.api.users.models import User

    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            await session.execute(update(User).where(User.id == user_id).values(role="admin"))
            await session.commit()
    finally:
        await database.dispose()


async def register_admin(api: RunningApi) -> tuple[str, dict[str, Any]]:
    """A new account with the admin role: its access token and its user."""
    token, body = await api.register(nickname="Admin")
    await promote_to_admin(api.settings, body["user"]["id"])
    return token, body["user"]
