"""The api under load: requests per second of its hot routes on SQLite and PostgreSQL, and
the end-to-end time of a local 4 s 1280x720 job.

One `sora2 serve api` process (APP_ENV=production, migrated first with `sora2 db upgrade`,
no embedded worker for the request figures) pinned to core 1; the load generator, an aiohttp
client keeping `CONNECTIONS` requests in flight, on core 0. Each rate is the best of a few
rounds: the machine is shared, and other processes only ever slow a round down. The api's own
CPU time per request (user + system, all its threads, over every round) depends far less on
that noise than a rate does: it is the figure to compare between runs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from bench import _noise
from bench._processes import Server, free_port

CONNECTIONS = 32
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench-pass-2026"
CREATE_BODY = {"prompt": "A paper boat drifts down a rainy street", "seconds": 4}


@dataclass
class Load:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    cpu_ms_per_request: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _drive(url: str, method: str, token: str, seconds: float, json: object | None) -> Load:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one_connection() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with http.request(method, url, json=json) as response:
                    await response.read()
                    if response.status >= 400:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
    return Load(len(latencies), elapsed, latencies, errors)


def _sora2(*args: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "sora2", *args],
        env=os.environ | env,
        check=True,
        capture_output=True,
    )


@contextmanager
def _database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"sora2_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_postgres(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _postgres(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def api_environment(database_url: str, workdir: Path, port: int) -> dict[str, str]:
    """How the benches run `sora2 serve api`: production, no embedded worker, quiet logs, and
    credits enough for every create."""
    return {
        "APP_ENV": "production",
        "JWT_SECRET": "b" * 48,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(workdir / "data"),
        "LOG_DIR": str(workdir / "logs"),
        "API_PORT": str(port),
        "API_EMBEDDED_WORKER": "false",
        "SIGNUP_CREDITS": "1000000",
        "GENERATE_LIMIT_PER_USER": "1000000",  # the create figure measures creates, not 429s
        "LOG_LEVEL": "WARNING",
    }


@contextmanager
def _api(database_url: str, workdir: Path, **extra: str) -> Iterator[tuple[str, Server]]:
    port = free_port()
    env = api_environment(database_url, workdir, port) | extra
    _sora2("db", "upgrade", env=env)
    server = Server(
        "api",
        [sys.executable, "-m", "sora2", "serve", "api", "--workers", "1"],
        1,
        workdir / "api.out",
        env,
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_until(f"{url}/api/health/live", b'{"status":"ok"}')
        yield url, server
    finally:
        server.stop()


async def _register(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        payload = {
            "email": f"b{uuid.uuid4().hex[:8]}@example.com",
            "password": PASSWORD,
            "nickname": "B",
        }
        async with http.post(f"{url}/api/auth/register", json=payload) as response:
            body = await response.json()
            return str(body["accessToken"])


async def _create_one(url: str, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"{url}/api/videos", json=CREATE_BODY) as response,
    ):
        return str((await response.json())["id"])


def _measure(kind: str, quick: bool) -> dict[str, Load]:
    seconds, rounds = (2.0, 1) if quick else (5.0, 3)
    os.sched_setaffinity(0, {0})
    with (
        tempfile.TemporaryDirectory(prefix="sora2-api-bench-") as tmp,
        _database(kind, Path(tmp)) as db,
        _api(db, Path(tmp)) as (url, server),
    ):
        token = asyncio.run(_register(url))
        video = asyncio.run(_create_one(url, token))
        best: dict[str, Load] = {}
        cpu_s: dict[str, float] = {}
        served: dict[str, int] = {}
        routes: list[tuple[str, str, str, object | None]] = [
            ("create", "POST", "/api/videos", CREATE_BODY),
            ("list", "GET", "/api/videos?limit=20", None),
            ("get", "GET", f"/api/videos/{video}", None),
            ("balance", "GET", "/api/credits/balance", None),
        ]
        for _ in range(rounds):
            for name, method, path, body in routes:
                before = server.cpu_seconds()
                load = asyncio.run(_drive(f"{url}{path}", method, token, seconds, body))
                cpu_s[name] = cpu_s.get(name, 0.0) + server.cpu_seconds() - before
                served[name] = served.get(name, 0) + load.requests
                if name not in best or load.rate > best[name].rate:
                    best[name] = load
        for name, load in best.items():
            load.cpu_ms_per_request = 1000 * cpu_s[name] / served[name]
        return best


def _end_to_end(quick: bool) -> list[float]:
    runs = 1 if quick else 3
    times: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="sora2-api-e2e-") as tmp,
        _api(
            f"sqlite:///{Path(tmp) / 'e2e.db'}",
            Path(tmp),
            API_EMBEDDED_WORKER="true",
            VIDEO_PROVIDER="local",
            WORKER_PROVIDER_POLL_MS="100",
            WORKER_IDLE_POLL_MS="50",
        ) as (url, _server),
    ):
        token = asyncio.run(_register(url))
        for _ in range(runs):
            times.append(asyncio.run(_one_job(url, token)))
    return times


async def _one_job(url: str, token: str) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        started = time.perf_counter()
        body = {
            "prompt": "A lighthouse in a storm, waves crashing",
            "seconds": 4,
            "size": "1280x720",
        }
        async with http.post(f"{url}/api/videos", json=body) as response:
            video_id = (await response.json())["id"]
        while True:
            async with http.get(f"{url}/api/videos/{video_id}") as response:
                status = (await response.json())["status"]
            if status in ("completed", "failed", "cancelled"):
                if status != "completed":
                    raise RuntimeError(f"the local job ended {status}")
                return time.perf_counter() - started
            await asyncio.sleep(0.05)


def run(quick: bool) -> str:
    lines = [
        "## API",
        "",
        "Reproduce: `.venv/bin/python -m bench api` (`--quick` for a smoke run).",
        "One `sora2 serve api` process (production settings, no embedded worker) on core 1;",
        f"{CONNECTIONS} requests kept in flight by an aiohttp client on core 0; best of "
        + ("1 round of 2 s" if quick else "3 rounds of 5 s")
        + " per figure.",
        "*create* = `POST /api/videos` (validate, charge, insert video + job in one transaction);",
        "*list* = `GET /api/videos?limit=20` (count + one page of the caller's videos, which grow",
        "during the run); *get* = `GET /api/videos/{id}`; *balance* = `GET /api/credits/balance`.",
        "Every request is signed in (token check + a query that the session is still live).",
        "*CPU ms/req* = the api process's CPU time (user + system, all threads) over all rounds of",
        "that route divided by the requests it answered: less sensitive to other load than req/s.",
        "",
        "| database | route | req/s | p50 ms | p99 ms | CPU ms/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    before = _noise.snapshot()
    for kind in ("sqlite", "postgresql"):
        for name, load in _measure(kind, quick).items():
            lines.append(
                f"| {kind} | {name} | {load.rate:,.0f} | {load.percentile(0.5):.1f} | "
                f"{load.percentile(0.99):.1f} | {load.cpu_ms_per_request:.2f} | {load.errors} |"
            )
    others = _noise.others_share(before, _noise.snapshot())
    times = _end_to_end(quick)
    lines += [
        "",
        f"Other processes used {others:.0%} of the machine's CPU during the request figures "
        "(PostgreSQL's server counts among them; load average at the end "
        f"{os.getloadavg()[0]:.1f}).",
        "",
        "End to end, local provider, 4 s 1280x720 (create → rendered, copied to storage,",
        "`completed`; api with its embedded worker, SQLite): "
        + ", ".join(f"{t:.2f} s" for t in times)
        + (f" (median {statistics.median(times):.2f} s)" if len(times) > 1 else ""),
        "",
    ]
    return "\n".join(lines)
