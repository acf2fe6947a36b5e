"""The api under load against a lean anchor doing the same work (issue 15), on SQLite and
PostgreSQL, and the end-to-end time of a local 4 s 1280x720 job.

One `sora2 serve api` process (APP_ENV=production, migrated first with `sora2 db upgrade`,
no embedded worker for the request figures) and the lean anchor (`bench/_lean_api.py`: bare ASGI
on asyncpg / sqlite3 under the same uvicorn settings, on the same database, the same rows and the
same token) both pinned to core 1; the load generator, an aiohttp client keeping `CONNECTIONS`
requests in flight, on core 0. Each route is driven against ours, then against the anchor, round
after round. Each rate is the best of a few rounds: the machine is shared, and other processes
only ever slow a round down. The server's own CPU time per request (user + system, all its
threads, over every round) depends far less on that noise than a rate does: it is the figure to
compare, and *ratio* = ours ÷ the anchor's is the issue's measure (target: at most 2).

Before the load, each route is asked once of both, and the answers compared (status, body, the
headers that matter): a difference is a bug in one of them, and the table says so.

Last, `sora2 serve web` in front of our api: `GET /api/proxy/videos/{id}` through it, with the
web's and the api's CPU per request; the api's share = api ÷ (api + web).
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import psutil

from bench import _noise
from bench._processes import Server, free_port

CONNECTIONS = 32
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench-pass-2026"
CREATE_BODY = {"prompt": "A paper boat drifts down a rainy street", "seconds": 4}
REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_PYTHON_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
SERVER_CPU, LOAD_CPU = 1, 0
# Videos made before the load, so the list's first page is full from the start.
SETUP_VIDEOS = 24
# Creates also measured with fewer in flight: on PostgreSQL ours deadlocks its pool with 32 (a
# create holds a connection while its rate limiter waits for another from the same pool).
CREATE_FEW = 8
RENDER_TIMEOUT_S = 120.0
# Response headers both must give alike (the rest: dates, request ids, transfer framing).
COMPARED_HEADERS = (
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "cache-control",
    "etag",
    "last-modified",
    "x-accel-buffering",
    "x-content-type-options",
)
# Fields of a create's answer that differ between any two creates.
CREATE_VARIES = ("id", "createdAt", "updatedAt", "balance")


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


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: object | None = None
    connections: int = CONNECTIONS


@dataclass
class Side:
    """One server's figures for one route over every round."""

    best_rate: float = 0.0
    cpu_s: float = 0.0
    served: int = 0
    errors: int = 0
    database_cpu_s: float | None = None

    def add(self, load: Load, cpu_s: float, database_cpu_s: float | None) -> None:
        self.best_rate = max(self.best_rate, load.rate)
        self.cpu_s += cpu_s
        self.served += load.requests
        self.errors += load.errors
        if database_cpu_s is not None:
            self.database_cpu_s = (self.database_cpu_s or 0.0) + database_cpu_s

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / max(self.served, 1)

    @property
    def database_cpu_ms_per_request(self) -> float | None:
        if self.database_cpu_s is None:
            return None
        return 1000 * self.database_cpu_s / max(self.served, 1)


@dataclass
class Pair:
    """One route's figures, ours and the anchor's, and whether their answers agreed."""

    ours: Side = field(default_factory=Side)
    anchor: Side = field(default_factory=Side)
    difference: str = ""

    @property
    def ratio(self) -> float:
        return self.ours.cpu_ms_per_request / max(self.anchor.cpu_ms_per_request, 1e-9)


async def _drive(
    url: str,
    method: str,
    token: str,
    seconds: float,
    json: object | None,
    extra_headers: dict[str, str] | None = None,
    connections: int = CONNECTIONS,
) -> Load:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}", **(extra_headers or {})}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one_connection() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with http.request(method, url, json=json) as response:
                        await response.read()
                        if response.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
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
    credits and rate limits enough for every create."""
    return {
        "APP_ENV": "production",
        "JWT_SECRET": "b" * 48,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(workdir / "data"),
        "LOG_DIR": str(workdir / "logs"),
        "API_PORT": str(port),
        "API_EMBEDDED_WORKER": "false",
        "SIGNUP_CREDITS": "1000000",
        "GENERATE_LIMIT_PER_USER": "1000000000",  # the create figure measures creates, not 429s
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
        SERVER_CPU,
        workdir / "api.out",
        env,
    )
    with _serving(server, port) as url:
        yield url, server


@contextmanager
def _serving(server: Server, port: int) -> Iterator[str]:
    """Starts `server`, waits until it says it is live on `port`, stops it afterwards."""
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_until(f"{url}/api/health/live", b'{"status":"ok"}')
        yield url
    finally:
        server.stop()


@contextmanager
def lean_anchor(env: dict[str, str], workdir: Path) -> Iterator[tuple[str, Server]]:
    """`bench/_lean_api.py` on the api's database and secret (`env`: the api's environment)."""
    port = free_port()
    server = Server(
        "anchor",
        [sys.executable, "-m", "bench._lean_api", "--port", str(port)],
        SERVER_CPU,
        workdir / "anchor.out",
        env | CHILD_PYTHON_ENV,
    )
    with _serving(server, port) as url:
        yield url, server


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


async def _wait_completed(url: str, token: str, video_id: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            async with http.get(f"{url}/api/videos/{video_id}") as response:
                status = (await response.json())["status"]
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"the bench's video ended {status}")
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the bench's video was not rendered within {RENDER_TIMEOUT_S:.0f} s")


def completed_video(url: str, token: str, env: dict[str, str], workdir: Path) -> str:
    """One video rendered by a `sora2 serve worker` started for it alone, then stopped (the
    request figures are taken without a worker)."""
    video = asyncio.run(_create_one(url, token))
    worker = Server(
        "worker",
        [sys.executable, "-m", "sora2", "serve", "worker"],
        LOAD_CPU,
        workdir / "worker.out",
        env | {"WORKER_IDLE_POLL_MS": "50", "WORKER_PROVIDER_POLL_MS": "100"},
    )
    worker.start()
    try:
        asyncio.run(_wait_completed(url, token, video))
    finally:
        worker.stop()
    return video


def hot_routes(video: str, done: str) -> list[Route]:
    """Issue 15's hot routes; `video` is a queued video, `done` a completed one."""
    return [
        Route("get", "GET", f"/api/videos/{video}"),
        Route("list", "GET", "/api/videos?limit=20"),
        Route("events (completed)", "GET", f"/api/videos/{done}/events"),
        Route("content 0-1023", "GET", f"/api/videos/{done}/content", {"Range": "bytes=0-1023"}),
        Route("thumbnail", "GET", f"/api/videos/{done}/thumbnail"),
        Route("balance", "GET", "/api/credits/balance"),
        Route("transactions", "GET", "/api/credits/transactions?limit=20"),
        Route("me", "GET", "/api/auth/me"),
        Route("models", "GET", "/api/models"),
        Route("create", "POST", "/api/videos", body=CREATE_BODY),
        Route(
            f"create, {CREATE_FEW} in flight",
            "POST",
            "/api/videos",
            body=CREATE_BODY,
            connections=CREATE_FEW,
        ),
    ]


async def _answer(url: str, route: Route, token: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}", **route.headers}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(route.method, url + route.path, json=route.body) as response,
    ):
        kept = {
            name: response.headers[name] for name in COMPARED_HEADERS if name in response.headers
        }
        return response.status, kept, await response.read()


def _json_or_bytes(body: bytes) -> Any:
    import json

    try:
        return json.loads(body)
    except ValueError:
        return body


async def compare(ours_url: str, anchor_url: str, route: Route, token: str) -> str:
    """'' when both answer `route` alike; else what differs (the bug is in one of them)."""
    ours = await _answer(ours_url, route, token)
    anchor = await _answer(anchor_url, route, token)
    problems = []
    if ours[0] != anchor[0]:
        problems.append(f"status {ours[0]} vs {anchor[0]}")
    for name in COMPARED_HEADERS:
        if name == "content-length" and route.method == "POST":
            continue  # a balance and an id of other lengths
        if ours[1].get(name) != anchor[1].get(name):
            problems.append(f"{name}: {ours[1].get(name)!r} vs {anchor[1].get(name)!r}")
    ours_body, anchor_body = _json_or_bytes(ours[2]), _json_or_bytes(anchor[2])
    if route.method == "POST" and isinstance(ours_body, dict) and isinstance(anchor_body, dict):
        if list(ours_body) != list(anchor_body):
            problems.append(f"fields {list(ours_body)} vs {list(anchor_body)}")
        for name in CREATE_VARIES:
            ours_body.pop(name, None)
            anchor_body.pop(name, None)
    if ours_body != anchor_body:
        problems.append(f"body {ours[2][:300]!r} vs {anchor[2][:300]!r}")
    elif isinstance(ours_body, dict) and list(ours_body) != list(anchor_body):
        problems.append("field order differs")
    return "; ".join(problems)


class PostgresBackends:
    """CPU time of the PostgreSQL server processes serving one database: what each side's
    round trips cost the database server (BEGIN/ROLLBACK, pings, statements), which shares the
    machine's two cores. Backends started during a drive count from zero; ones that end during
    it are lost (pools keep theirs)."""

    def __init__(self, database_url: str) -> None:
        self.name = database_url.rsplit("/", 1)[1]

    def cpu_seconds(self) -> dict[int, float]:
        pids = asyncio.run(self._pids())
        seconds = {}
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            seconds[pid] = float(times.user + times.system)
        return seconds

    async def _pids(self) -> list[int]:
        connection = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.name
            )
        finally:
            await connection.close()
        return [int(row["pid"]) for row in rows]


def _drive_measured(
    server: Server,
    url: str,
    route: Route,
    token: str,
    seconds: float,
    side: Side,
    backends: PostgresBackends | None,
) -> None:
    database_before = backends.cpu_seconds() if backends is not None else {}
    before = server.cpu_seconds()
    load = asyncio.run(
        _drive(
            url + route.path,
            route.method,
            token,
            seconds,
            route.body,
            route.headers,
            route.connections,
        )
    )
    cpu_s = server.cpu_seconds() - before
    database_cpu_s = None
    if backends is not None:
        after = backends.cpu_seconds()
        database_cpu_s = sum(t - database_before.get(pid, 0.0) for pid, t in after.items())
    side.add(load, cpu_s, database_cpu_s)


@dataclass
class Through:
    """`GET /api/proxy/videos/{id}` through the web: rate and each process's CPU per request."""

    rate: float
    web_cpu_ms: float
    api_cpu_ms: float
    errors: int

    @property
    def api_share(self) -> float:
        return self.api_cpu_ms / max(self.api_cpu_ms + self.web_cpu_ms, 1e-9)


def _web_environment(workdir: Path, port: int, api_url: str) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "JWT_SECRET": "w" * 48,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "API_URL": api_url,
        "LOG_LEVEL": "WARNING",
        "LOG_DIR": str(workdir / "logs"),
        "DATA_DIR": str(workdir / "web-data"),
        **CHILD_PYTHON_ENV,
    }


def through_web(
    api_url: str, api: Server, workdir: Path, video: str, token: str, seconds: float, rounds: int
) -> Through:
    port = free_port()
    web = Server(
        "web",
        [sys.executable, "-m", "sora2", "serve", "web", "--workers", "1"],
        SERVER_CPU,
        workdir / "web.out",
        _web_environment(workdir, port, api_url),
    )
    web.start()
    try:
        web_url = f"http://127.0.0.1:{port}"
        web.wait_until(f"{web_url}/healthz", None)
        route = Route("proxied get", "GET", f"/api/proxy/videos/{video}")
        asyncio.run(_drive(web_url + route.path, "GET", token, 1.0, None))  # warm up
        best = 0.0
        web_cpu = api_cpu = 0.0
        served = errors = 0
        for _ in range(rounds):
            web_before, api_before = web.cpu_seconds(), api.cpu_seconds()
            load = asyncio.run(_drive(web_url + route.path, "GET", token, seconds, None))
            web_cpu += web.cpu_seconds() - web_before
            api_cpu += api.cpu_seconds() - api_before
            served += load.requests
            errors += load.errors
            best = max(best, load.rate)
        return Through(best, 1000 * web_cpu / served, 1000 * api_cpu / served, errors)
    finally:
        web.stop()


@dataclass
class Measured:
    pairs: dict[str, Pair]
    through: Through


def _measure(kind: str, quick: bool) -> Measured:
    seconds, rounds = (2.0, 1) if quick else (5.0, 3)
    os.sched_setaffinity(0, {LOAD_CPU})
    with (
        tempfile.TemporaryDirectory(prefix="sora2-api-bench-") as tmp,
        _database(kind, Path(tmp)) as db,
        _api(db, Path(tmp)) as (url, server),
        ExitStack() as stack,
    ):
        workdir = Path(tmp)
        env = api_environment(db, workdir, int(url.rsplit(":", 1)[1]))
        token = asyncio.run(_register(url))
        done = completed_video(url, token, env, workdir)
        videos = [asyncio.run(_create_one(url, token)) for _ in range(SETUP_VIDEOS)]
        anchor_url, anchor = stack.enter_context(lean_anchor(env, workdir))
        routes = hot_routes(videos[0], done)
        backends = PostgresBackends(db) if kind == "postgresql" else None
        pairs: dict[str, Pair] = {}
        for route in routes:
            # Warm both (first statements prepared, the token checked once), then compare.
            for target in (url, anchor_url):
                warm = _drive(
                    target + route.path, route.method, token, 0.3, route.body, route.headers, 4
                )
                asyncio.run(warm)
            difference = asyncio.run(compare(url, anchor_url, route, token))
            pairs[route.name] = Pair(difference=difference)
        for _ in range(rounds):
            for route in routes:
                pair = pairs[route.name]
                _drive_measured(server, url, route, token, seconds, pair.ours, backends)
                _drive_measured(anchor, anchor_url, route, token, seconds, pair.anchor, backends)
        stack.close()  # the anchor is stopped: the web's figures are ours alone
        through = through_web(url, server, workdir, videos[0], token, seconds, rounds)
        return Measured(pairs, through)


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


def _errors(pair: Pair) -> str:
    if not pair.ours.errors and not pair.anchor.errors:
        return "0"
    return f"**ours {pair.ours.errors}, anchor {pair.anchor.errors}**"


def _database_cpu(pair: Pair) -> str:
    ours, anchor = pair.ours.database_cpu_ms_per_request, pair.anchor.database_cpu_ms_per_request
    if ours is None or anchor is None:
        return "n/a"
    return f"{ours:.2f} / {anchor:.2f}"


def run(quick: bool) -> str:
    lines = [
        "## API",
        "",
        "Reproduce: `.venv/bin/python -m bench api` (`--quick` for a smoke run).",
        "One `sora2 serve api` process (production settings, no embedded worker) and the lean",
        "anchor (`bench/_lean_api.py`, same uvicorn settings, same database, rows and token) on",
        f"core 1; {CONNECTIONS} requests kept in flight by an aiohttp client on core 0; each route",
        "driven against ours then the anchor, best of "
        + ("1 round of 2 s" if quick else "3 rounds of 5 s")
        + " per rate.",
        "*CPU ms/req* = the server process's CPU time (user + system, all threads) over all rounds",
        "of that route divided by the requests it answered; *ratio* = ours ÷ anchor (issue 15:",
        "at most 2). *same answer*: both asked once before the load, status, body and headers",
        "compared (for create: all but id, timestamps and balance). *PostgreSQL's CPU*: the",
        "database server's backends for the bench's database over the same drives (not in the",
        "ratio; it shares the two cores).",
        "",
        "| database | route | ours req/s | anchor req/s | ours CPU ms/req | anchor CPU ms/req "
        "| ratio | PostgreSQL's CPU ms/req, ours / anchor | errors | same answer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    before = _noise.snapshot()
    differences: list[str] = []
    through: dict[str, Through] = {}
    for kind in ("sqlite", "postgresql"):
        measured = _measure(kind, quick)
        through[kind] = measured.through
        for name, pair in measured.pairs.items():
            same = "yes" if not pair.difference else "**no** (below)"
            if pair.difference:
                differences.append(f"- {kind}, {name}: {pair.difference}")
            lines.append(
                f"| {kind} | {name} | {pair.ours.best_rate:,.0f} | {pair.anchor.best_rate:,.0f} | "
                f"{pair.ours.cpu_ms_per_request:.2f} | {pair.anchor.cpu_ms_per_request:.3f} | "
                f"**{pair.ratio:.1f}x** | {_database_cpu(pair)} | {_errors(pair)} | {same} |"
            )
    others = _noise.others_share(before, _noise.snapshot())
    if differences:
        lines += ["", "Answers that differed (ours vs the anchor's):", "", *differences]
    lines += [
        "",
        "Through the web (`sora2 serve web` → our api, both on core 1): "
        "`GET /api/proxy/videos/{id}`, the api's share of a full request's CPU:",
        "",
        "| database | req/s | web CPU ms/req | api CPU ms/req | api's share | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, figures in through.items():
        lines.append(
            f"| {kind} | {figures.rate:,.0f} | {figures.web_cpu_ms:.2f} | "
            f"{figures.api_cpu_ms:.2f} | {figures.api_share:.0%} | {figures.errors} |"
        )
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
