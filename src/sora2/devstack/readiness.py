"""Is a service up? Its health URL answered 200: polled until a deadline, never guessed.

The probe is one plain HTTP/1.1 GET over asyncio streams. A full client library would do, but
importing aiohttp's client costs the launcher about half a second (it builds SSL contexts at
import), and start-up time is what a developer waits for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from urllib.parse import urlsplit

POLL_INTERVAL = 0.02  # a refused connect costs microseconds; a late notice costs the developer
ATTEMPT_TIMEOUT = 2.0
_MAX_DETAIL_BYTES = 300


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


async def probe(url: str) -> Probe:
    """GET `url` once (http only): its status and the start of its body, or why it failed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    netloc = parts.netloc
    try:
        async with asyncio.timeout(ATTEMPT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                request = (
                    f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {netloc}\r\n"
                    "Accept: application/json\r\nConnection: close\r\n\r\n"
                )
                writer.write(request.encode("ascii"))
                await writer.drain()
                return await _read_response(reader)
            finally:
                writer.close()
    except TimeoutError:
        return Probe(None, f"no answer within {ATTEMPT_TIMEOUT:g} s")
    except OSError as error:
        # asyncio words a refusal as "Connect call failed (…)"; the errno says it plainly.
        reason = os.strerror(error.errno) if error.errno else type(error).__name__
        return Probe(None, f"cannot connect ({reason})")


async def _read_response(reader: asyncio.StreamReader) -> Probe:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return Probe(None, "the connection closed before a complete HTTP response")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        return Probe(None, f"not an HTTP response: {status_line[:80]!r}")
    body = await reader.read(_MAX_DETAIL_BYTES)
    return Probe(int(fields[1]), body.decode("utf-8", "replace").strip())


async def wait_until_ready(url: str, *, deadline: float, exited: asyncio.Future[int]) -> Probe:
    """Polls `url` until it answers 200, `exited` completes or `deadline` (monotonic) passes.

    Returns the last probe; the caller tells which of the three happened.
    """
    last = Probe(None, "not polled yet")
    while not exited.done():
        last = await probe(url)
        if last.ready or time.monotonic() >= deadline:
            return last
        # Poll again soon, but wake at once if the process exits meanwhile.
        await asyncio.wait([exited], timeout=POLL_INTERVAL)
    return last
