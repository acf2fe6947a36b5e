"""Is a service up? Its health URL answered 200: polled until a deadline, never guessed."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp

POLL_INTERVAL = 0.05
ATTEMPT_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class Probe:
    """The last thing a health URL said: a status and a short body, or why it could not answer."""

    status: int | None
    detail: str

    @property
    def ready(self) -> bool:
        return self.status == 200

    def describe(self) -> str:
        if self.status is None:
            return self.detail
        return f"HTTP {self.status}: {self.detail}" if self.detail else f"HTTP {self.status}"


async def probe(session: aiohttp.ClientSession, url: str) -> Probe:
    try:
        async with session.get(url, allow_redirects=False) as response:
            body = (await response.content.read(300)).decode("utf-8", "replace").strip()
            return Probe(response.status, body)
    except aiohttp.ClientConnectorError as error:
        return Probe(None, f"cannot connect ({error.os_error.strerror or error.os_error})")
    except (aiohttp.ClientError, TimeoutError) as error:
        return Probe(None, f"no answer ({type(error).__name__})")


async def wait_until_ready(url: str, *, deadline: float, exited: asyncio.Future[int]) -> Probe:
    """Polls `url` until it answers 200, `exited` completes or `deadline` (monotonic) passes.

    Returns the last probe; the caller tells which of the three happened.
    """
    timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        last = Probe(None, "not polled yet")
        while not exited.done():
            last = await probe(session, url)
            if last.ready or time.monotonic() >= deadline:
                return last
            # Poll again soon, but wake at once if the process exits meanwhile.
            await asyncio.wait([exited], timeout=POLL_INTERVAL)
        return last
