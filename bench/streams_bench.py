"""Thousands of viewers of live progress through web → proxy → api (`python -m bench streams`).

For each viewer count, fresh servers: a PostgreSQL database migrated by `sora2 db upgrade`, one
`sora2 serve api --workers 1` (production, no embedded worker) pinned to core 1 and one
`sora2 serve web --workers 1` pinned to core 0; the client (this process) is not pinned. Videos
are real (created through the api, one per ten viewers, spread over one account per 250
viewers); each viewer keeps a `GET /api/proxy/videos/{id}/events` open through the web, as a
video page does, or (a second series) `GET /api/videos/{id}/events` on the api directly.

Phases, each measured alone:
1. ordinary requests with no viewer (the baseline): `GET /api/proxy/videos/{id}` through the web,
   `ORDINARY_CONNECTIONS` in flight, from a client process of their own: timed in this
   process, they would wait behind the viewers' events in its one event loop, and the figure
   would be the client's queue, not the servers' answer;
2. the viewers open, `WAVE` at a time; a viewer is held once its first event arrived. The web's
   and the api's RSS and CPU per viewer are measured over this phase;
3. a quiet hold: statements the api sent to the database per second (its own counter), and the
   live-progress poller's queries per second;
4. progress changes, as a worker makes them: one UPDATE of every video's progress from this
   process (another process, as `sora2 serve worker` is), committed; the time from sending it to
   each viewer receiving its event; its 99th percentile is the figure;
5. ordinary requests again, while every viewer is held.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from bench import _noise
from bench._processes import Server, free_port
from bench._viewers import (
    Viewer,
    delivery_seconds,
    open_viewers,
    percentile,
    raise_open_file_limit,
)
from bench.api_bench import _database, _sora2, api_environment

API_CPU, WEB_CPU = 1, 0
VIEWERS = (1_000, 2_000, 5_000)
QUICK_VIEWERS = (200, 500)
VIEWERS_PER_VIDEO = 10
VIEWERS_PER_ACCOUNT = 250
WAVE = 250
OPEN_TIMEOUT = 30.0
ORDINARY_CONNECTIONS = 8
CHANGE_DEADLINE = 5.0
PASSWORD = "bench-streams-2026"
REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_PYTHON_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
KIB = 1024

TARGET_P99_MS = 50.0
TARGET_DELIVERY_S = 1.0
TARGET_WEB_KIB_PER_VIEWER = 20.0


@dataclass(frozen=True)
class Plan:
    viewers: tuple[int, ...]
    ordinary_seconds: float
    hold_seconds: float
    changes: int


FULL = Plan(VIEWERS, ordinary_seconds=5.0, hold_seconds=5.0, changes=5)
QUICK = Plan(QUICK_VIEWERS, ordinary_seconds=2.0, hold_seconds=2.0, changes=2)


@dataclass
class Ordinary:
    latencies_ms: list[float]
    errors: int

    def p(self, share: float) -> float:
        return percentile(sorted(self.latencies_ms), share)


THROUGH_WEB = "web → proxy → api"
DIRECT = "api directly"


@dataclass
class Round:
    route: str
    viewers: int
    held: int
    open_seconds: float
    baseline: Ordinary
    loaded: Ordinary
    web_kib_per_viewer: float
    api_kib_per_viewer: float
    web_open_ms_per_viewer: float
    api_open_ms_per_viewer: float
    web_change_us_per_viewer: float
    api_change_us_per_viewer: float
    statements_per_second: float
    poller_queries_per_second: float
    delivery_p99_s: list[float]
    delivery_p50_s: list[float]
    still_held: int


@dataclass
class Servers:
    api: Server
    web: Server
    api_url: str
    api_port: int
    web_port: int
    database_url: str


@contextmanager
def running_servers(workdir: Path, database_url: str) -> Iterator[Servers]:
    api_port, web_port = free_port(), free_port()
    api_env = api_environment(database_url, workdir, api_port) | {
        "PASSWORD_HASH_MEMORY_KIB": "1024",
        "REGISTER_LIMIT_PER_IP": "100000",
        **CHILD_PYTHON_ENV,
    }
    _sora2("db", "upgrade", env=api_env)
    api = Server("api", _serve("api"), API_CPU, workdir / "api.out", api_env)
    web_env = _web_env(workdir, web_port, f"http://127.0.0.1:{api_port}")
    web = Server("web", _serve("web"), WEB_CPU, workdir / "web.out", web_env)
    with ExitStack() as stack:
        for server in (api, web):
            server.start()
            stack.callback(server.stop)
        api_url = f"http://127.0.0.1:{api_port}"
        api.wait_until(f"{api_url}/api/health/live", b'{"status":"ok"}')
        web.wait_until(f"http://127.0.0.1:{web_port}/healthz", None)
        yield Servers(api, web, api_url, api_port, web_port, database_url)


def _serve(service: str) -> list[str]:
    # One process each: the figures per viewer are per process (production's default is one per
    # core, and several api processes would each hold their own LISTEN and poller).
    return [sys.executable, "-m", "sora2", "serve", service, "--workers", "1"]


def _web_env(workdir: Path, port: int, api_url: str) -> dict[str, str]:
    return {
        "API_URL": api_url,
        "APP_ENV": "production",
        "JWT_SECRET": "w" * 48,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "LOG_DIR": str(workdir / "logs"),
        "DATA_DIR": str(workdir / "web-data"),
        **CHILD_PYTHON_ENV,
    }


# --- set-up: accounts and videos through the api -------------------------------------------


async def _accounts_and_videos(api_url: str, viewers: int) -> list[tuple[str, str]]:
    """(video id, its owner's token) for one video per `VIEWERS_PER_VIDEO` viewers."""
    accounts = max(1, viewers // VIEWERS_PER_ACCOUNT)
    videos = max(1, viewers // VIEWERS_PER_VIDEO)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
        tokens = await asyncio.gather(*(_register(http, api_url) for _ in range(accounts)))
        return list(
            await asyncio.gather(
                *(_create(http, api_url, tokens[n % accounts]) for n in range(videos))
            )
        )


async def _register(http: aiohttp.ClientSession, api_url: str) -> str:
    payload = {"email": f"v{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD}
    async with http.post(f"{api_url}/api/auth/register", json=payload | {"nickname": "V"}) as r:
        body = await r.json()
        return str(body["accessToken"])


async def _create(http: aiohttp.ClientSession, api_url: str, token: str) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"prompt": "A kite over a windy beach", "seconds": 4}
    async with http.post(f"{api_url}/api/videos", json=body, headers=headers) as response:
        return str((await response.json())["id"]), token


# --- measurements ------------------------------------------------------------------------


async def _ordinary(web_port: int, videos: list[tuple[str, str]], seconds: float) -> Ordinary:
    """`GET /api/proxy/videos/{id}` through the web, `ORDINARY_CONNECTIONS` in flight."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=ORDINARY_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one_connection(offset: int) -> None:
            nonlocal errors
            n = offset
            while time.perf_counter() < deadline:
                video_id, token = videos[n % len(videos)]
                n += ORDINARY_CONNECTIONS
                started = time.perf_counter()
                try:
                    async with http.get(
                        f"http://127.0.0.1:{web_port}/api/proxy/videos/{video_id}",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as response:
                        await response.read()
                        errors += response.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one_connection(n) for n in range(ORDINARY_CONNECTIONS)))
    return Ordinary(latencies, errors)


def _ordinary_in_child(web_port: int, videos: list[tuple[str, str]], seconds: float) -> Ordinary:
    return asyncio.run(_ordinary(web_port, videos, seconds))


async def _ordinary_elsewhere(
    web_port: int, videos: list[tuple[str, str]], seconds: float
) -> Ordinary:
    """`_ordinary`, from a fresh process (spawned: it inherits none of the viewers' sockets)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as child:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(child, _ordinary_in_child, web_port, videos, seconds)


async def _api_counters(api_url: str) -> tuple[float, float]:
    """(statements the api sent to the database, live-progress poller queries), from /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{api_url}/metrics") as response:
        text = await response.text()
    statements = _sample(text, r"sora2_api_database_queries_total")
    polls = _sample(text, r"sora2_live_polls_total\{[^}]*\}")
    return statements, polls


def _sample(metrics: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name} (\S+)$", metrics, re.M))


async def _change_progress(database_url: str, progress: int) -> float:
    """Moves every video to `progress`, as a worker does; returns when it was sent."""
    connection = await asyncpg.connect(database_url)
    try:
        sent = time.perf_counter()
        await connection.execute(
            "UPDATE videos SET status = 'in_progress', progress = $1, updated_at = now()",
            progress,
        )
        return sent
    finally:
        await connection.close()


async def _wait_for_delivery(viewers: list[Viewer], progress: int) -> None:
    deadline = time.perf_counter() + CHANGE_DEADLINE
    while time.perf_counter() < deadline:
        if all(progress in viewer.arrivals for viewer in viewers):
            return
        await asyncio.sleep(0.05)


async def _round(servers: Servers, viewers_count: int, plan: Plan, route: str) -> Round:
    videos = await _accounts_and_videos(servers.api_url, viewers_count)
    port, prefix = (
        (servers.web_port, "/api/proxy") if route == THROUGH_WEB else (servers.api_port, "/api")
    )
    streams = [
        (f"{prefix}/videos/{video_id}/events", token)
        for n in range(viewers_count)
        for video_id, token in [videos[n % len(videos)]]
    ]
    baseline = await _ordinary_elsewhere(servers.web_port, videos, plan.ordinary_seconds)

    web_rss, api_rss = servers.web.reset_peak_rss(), servers.api.reset_peak_rss()
    web_cpu, api_cpu = servers.web.cpu_seconds(), servers.api.cpu_seconds()
    started = time.perf_counter()
    viewers = await open_viewers(port, streams, wave=WAVE, timeout=OPEN_TIMEOUT)
    open_seconds = time.perf_counter() - started
    held = [viewer for viewer in viewers if viewer.held]
    await asyncio.sleep(1.0)  # let both servers settle before reading their memory
    per_viewer = max(1, len(held))
    web_kib = (servers.web.reset_peak_rss() - web_rss) / KIB / per_viewer
    api_kib = (servers.api.reset_peak_rss() - api_rss) / KIB / per_viewer
    web_open = (servers.web.cpu_seconds() - web_cpu) * 1000 / per_viewer
    api_open = (servers.api.cpu_seconds() - api_cpu) * 1000 / per_viewer

    statements, polls = await _api_counters(servers.api_url)
    hold_started = time.perf_counter()
    await asyncio.sleep(plan.hold_seconds)
    statements_after, polls_after = await _api_counters(servers.api_url)
    held_for = time.perf_counter() - hold_started

    p99s, p50s = [], []
    web_cpu, api_cpu = servers.web.cpu_seconds(), servers.api.cpu_seconds()
    for change in range(1, plan.changes + 1):
        progress = change * 10
        sent = await _change_progress(servers.database_url, progress)
        await _wait_for_delivery(held, progress)
        delays = delivery_seconds(held, progress, sent)
        p99s.append(percentile(delays, 0.99))
        p50s.append(percentile(delays, 0.50))
        await asyncio.sleep(0.5)
    deliveries = max(1, len(held)) * plan.changes
    web_change = (servers.web.cpu_seconds() - web_cpu) * 1e6 / deliveries
    api_change = (servers.api.cpu_seconds() - api_cpu) * 1e6 / deliveries

    loaded = await _ordinary_elsewhere(servers.web_port, videos, plan.ordinary_seconds)
    still_held = sum(1 for viewer in held if not viewer.closed)
    for viewer in viewers:
        viewer.close()
    return Round(
        route=route,
        viewers=viewers_count,
        held=len(held),
        open_seconds=open_seconds,
        baseline=baseline,
        loaded=loaded,
        web_kib_per_viewer=web_kib,
        api_kib_per_viewer=api_kib,
        web_open_ms_per_viewer=web_open,
        api_open_ms_per_viewer=api_open,
        web_change_us_per_viewer=web_change,
        api_change_us_per_viewer=api_change,
        statements_per_second=(statements_after - statements) / held_for,
        poller_queries_per_second=(polls_after - polls) / held_for,
        delivery_p99_s=p99s,
        delivery_p50_s=p50s,
        still_held=still_held,
    )


def measure(viewers_count: int, plan: Plan, route: str) -> Round:
    with (
        tempfile.TemporaryDirectory(prefix="sora2-streams-bench-") as tmp,
        _database("postgresql", Path(tmp)) as database_url,
        running_servers(Path(tmp), database_url) as servers,
    ):
        return asyncio.run(_round(servers, viewers_count, plan, route))


# --- the report --------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "never" if seconds == float("inf") else f"{seconds * 1000:,.0f}"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def report(rounds: list[Round], plan: Plan, others: float) -> str:
    lines = [
        "## Streams: thousands of viewers of live progress",
        "",
        "Reproduce: `.venv/bin/python -m bench streams` (`--quick`: "
        f"{' / '.join(map(str, QUICK_VIEWERS))} viewers).",
        "Per viewer count and route, fresh servers on PostgreSQL: `sora2 serve api` (core 1) and",
        "`sora2 serve web` (core 0), production settings; the viewers in this process. Each viewer",
        "holds `GET /api/proxy/videos/{id}/events` through the web (*web → proxy → api*), or",
        "`GET /api/videos/{id}/events` on the api itself (*api directly*: what the api holds",
        f"whatever the proxy does); one video per {VIEWERS_PER_VIDEO} viewers, one account per "
        f"{VIEWERS_PER_ACCOUNT}.",
        f"Ordinary requests: `GET /api/proxy/videos/{{id}}` through the web, "
        f"{ORDINARY_CONNECTIONS} in flight for {plan.ordinary_seconds:g} s from a client process "
        "of their own,",
        "before the viewers open and while they are all open. A change is one UPDATE of every",
        "video's progress made by another process, as a worker's; its figure is the time until",
        f"99 % (50 %) of the held viewers received it ({plan.changes} changes: median, worst).",
        "",
        "| route | viewers | held (still at the end) | open s | ordinary p50 / p99 ms, "
        "none open | ordinary p50 / p99 ms, all open (errors) | change → 99 % ms "
        "(median, worst) | change → 50 % ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.route} | {r.viewers:,} | {r.held:,} ({r.still_held:,}) | "
            f"{r.open_seconds:.1f} | {r.baseline.p(0.5):.1f} / {r.baseline.p(0.99):.1f} | "
            f"{r.loaded.p(0.5):.1f} / {r.loaded.p(0.99):.1f} ({r.loaded.errors:,}) | "
            f"{_ms(statistics.median(r.delivery_p99_s))}, {_ms(max(r.delivery_p99_s))} | "
            f"{_ms(statistics.median(r.delivery_p50_s))} |"
        )
    lines += [
        "",
        "RSS and CPU per viewer are per viewer held (refused ones cost something too); "
        "statements/s over",
        f"a {plan.hold_seconds:g} s quiet hold (two `/metrics` scrapes included).",
        "",
        "| route | viewers | web RSS KiB/viewer | api RSS KiB/viewer | web / api CPU ms per "
        "viewer opened | web / api CPU µs per viewer per change | api statements/s held | "
        "poller queries/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.route} | {r.viewers:,} | {r.web_kib_per_viewer:.1f} | "
            f"{r.api_kib_per_viewer:.1f} | "
            f"{r.web_open_ms_per_viewer:.2f} / {r.api_open_ms_per_viewer:.2f} | "
            f"{r.web_change_us_per_viewer:.0f} / {r.api_change_us_per_viewer:.0f} | "
            f"{r.statements_per_second:.1f} | {r.poller_queries_per_second:.1f} |"
        )
    lines += ["", *_targets(rounds), "", f"Other processes used {others:.0%} of the machine's CPU."]
    return "\n".join(lines) + "\n"


def _targets(rounds: list[Round]) -> list[str]:
    """The issue's targets, web → proxy → api; the api alone, for what is the api's."""
    lines = ["| target | route | figure | verdict |", "|---|---|---|---|"]
    for route in (THROUGH_WEB, DIRECT):
        measured = [r for r in rounds if r.route == route]
        if not measured:
            continue
        largest = max(measured, key=lambda r: r.viewers)
        p99 = max(r.loaded.p(0.99) for r in measured)
        errors = sum(r.loaded.errors for r in measured)
        delivery = max(max(r.delivery_p99_s) for r in measured)
        rates = [r.statements_per_second for r in measured]
        steady = max(rates) <= 1.5 * min(rates) + 1
        lines += [
            f"| {largest.viewers:,} viewers held | {route} | {largest.still_held:,} | "
            f"{_verdict(largest.still_held == largest.viewers)} |",
            f"| ordinary p99 ≤ {TARGET_P99_MS:g} ms while open, no error | {route} | "
            f"{p99:.1f} ms, {errors:,} errors | {_verdict(p99 <= TARGET_P99_MS and not errors)} |",
            f"| database statements/s independent of viewers | {route} | "
            f"{' / '.join(f'{rate:.1f}' for rate in rates)} | {_verdict(steady)} |",
            f"| a change reaches 99 % within {TARGET_DELIVERY_S:g} s | {route} | "
            f"{_ms(delivery)} ms | {_verdict(delivery <= TARGET_DELIVERY_S)} |",
        ]
        if route == THROUGH_WEB:
            web_kib = max(r.web_kib_per_viewer for r in measured)
            lines.append(
                f"| ≤ {TARGET_WEB_KIB_PER_VIEWER:g} KiB web RSS per viewer | {route} | "
                f"{web_kib:.1f} KiB | {_verdict(web_kib <= TARGET_WEB_KIB_PER_VIEWER)} |"
            )
    return lines


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    limit = raise_open_file_limit()
    if limit < 2 * max(plan.viewers) + 100:
        raise SystemExit(f"the open-file limit is {limit}: too low for {max(plan.viewers)} viewers")
    before = _noise.snapshot()
    rounds = [
        measure(count, plan, route) for route in (THROUGH_WEB, DIRECT) for count in plan.viewers
    ]
    return report(rounds, plan, _noise.others_share(before, _noise.snapshot()))


def run_some(counts: tuple[int, ...], *, web_only: bool) -> str:
    """A shorter run of chosen viewer counts (ordinary requests 5 s, hold 3 s, 3 changes), for
    a machine or a time budget where the full run's four minutes are too many:
    `python -m bench.streams_bench [--web-only] 2000 5000`."""
    plan = Plan(counts, ordinary_seconds=5.0, hold_seconds=3.0, changes=3)
    raise_open_file_limit()
    before = _noise.snapshot()
    routes = (THROUGH_WEB,) if web_only else (THROUGH_WEB, DIRECT)
    rounds = [measure(count, plan, route) for route in routes for count in counts]
    return report(rounds, plan, _noise.others_share(before, _noise.snapshot()))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    only_web = "--web-only" in arguments
    print(run_some(tuple(int(a) for a in arguments if a != "--web-only"), web_only=only_web))
