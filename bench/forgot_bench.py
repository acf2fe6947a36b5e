"""`python -m bench forgot`: does "forgot password" take the same time for known and unknown
emails, and does a slow mail server show in the answer?

The real api (uvicorn, in this process, SQLite in a temporary folder) sends through a real SMTP
server on loopback (aiosmtpd). Requests alternate between an email with an account and one
without, so both see the same machine; then the mail server is made to hold every message for
a second, which a known email's answer must not wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from aiosmtpd.controller import Controller

from sora2.api.app import create_app
from sora2.settings import load_settings

KNOWN = "known@example.com"
UNKNOWN = "nobody@example.com"


class _Inbox:
    def __init__(self) -> None:
        self.delay = 0.0
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        self.received += 1
        return "250 OK"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _measure(rounds: int, folder: Path) -> tuple[dict[str, list[float]], int]:
    inbox = _Inbox()
    smtp_port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    settings = load_settings(
        app_env="test",
        data_dir=folder,
        log_dir=folder / "logs",
        jwt_secret="bench-" + "x" * 40,
        api_embedded_worker=False,
        password_hash_memory_kib=1024,
        smtp_url=f"smtp://127.0.0.1:{smtp_port}",
        forgot_limit_per_email=10**6,
        forgot_limit_per_ip=10**6,
        log_level="WARNING",
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None)
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    timings: dict[str, list[float]] = {"known": [], "unknown": [], "known, mail held 1 s": []}
    try:
        async with aiohttp.ClientSession() as http:
            account = {"email": KNOWN, "password": "bench-pass-1", "nickname": "Bench"}
            await http.post(f"{url}/api/auth/register", json=account)

            async def forgot(email: str) -> float:
                started = time.perf_counter()
                async with http.post(
                    f"{url}/api/auth/password/forgot", json={"email": email}
                ) as answer:
                    await answer.read()
                    assert answer.status == 202
                return time.perf_counter() - started

            for _ in range(5):  # warm-up
                await forgot(KNOWN)
                await forgot(UNKNOWN)
            for _ in range(rounds):
                timings["known"].append(await forgot(KNOWN))
                timings["unknown"].append(await forgot(UNKNOWN))
            inbox.delay = 1.0
            for _ in range(max(5, rounds // 10)):
                timings["known, mail held 1 s"].append(await forgot(KNOWN))
    finally:
        server.should_exit = True
        await task
        controller.stop()
    return timings, inbox.received


def run(quick: bool) -> str:
    rounds = 50 if quick else 300
    with tempfile.TemporaryDirectory() as folder:
        timings, received = asyncio.run(_measure(rounds, Path(folder)))
    baseline = statistics.median(timings["unknown"])
    lines = [
        "## Forgot password: known vs unknown email",
        "",
        f"{rounds} alternating requests each; the api and an aiosmtpd server on loopback "
        f"({received} mails delivered by the end).",
        "",
        "| email | requests | p50 ms | p90 ms | p50 / unknown p50 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in timings.items():
        ordered = sorted(values)
        p50 = statistics.median(ordered)
        p90 = ordered[int(len(ordered) * 0.9) - 1]
        figures = f"{p50 * 1000:.2f} | {p90 * 1000:.2f} | {p50 / baseline:.2f}"
        lines.append(f"| {name} | {len(values)} | {figures} |")
    return "\n".join(lines) + "\n"
