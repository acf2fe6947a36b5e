"""The api's instructions per request under callgrind, by route, against the lean anchor's
(`bench/_lean_api.py`, issue 15): a load-independent cost and a load-independent ratio.

The api's req/s and CPU time move with everyone else's load on the shared machine; the number of
instructions it executes per request (all its threads) does not, so this is the figure to judge a
change of the api by. The rows are made first through our api running normally (an account, a
video rendered by a `sora2 serve worker` started for it, `SETUP_VIDEOS` more). Then our api
(`sora2 serve api`, production settings, SQLite unless `DATABASE_URL` names a PostgreSQL
database) runs under callgrind, and after it the anchor, on the same database with the same token;
per route the counters are zeroed, `REQUESTS` requests are sent (`IN_FLIGHT` in flight) and the
dump's total is divided by them.
Run: `.venv/bin/python -m bench._api_instructions` (a few minutes).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from bench._instructions import STARTUP_TIMEOUT_S
from bench._processes import Server, free_port
from bench.api_bench import (
    CHILD_PYTHON_ENV,
    CONNECTIONS,
    SETUP_VIDEOS,
    Route,
    _api,
    _create_one,
    _register,
    api_environment,
    completed_video,
    hot_routes,
)

REQUESTS = 100
IN_FLIGHT = 8
WARM_UP = 30


async def _send(url: str, route: Route, token: str, count: int) -> None:
    left = count
    headers = {"Authorization": f"Bearer {token}", **route.headers}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one_connection() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with http.request(route.method, url + route.path, json=route.body) as answer:
                    await answer.read()
                    if answer.status >= 400:
                        raise RuntimeError(f"{route.method} {url}: HTTP {answer.status}")

        await asyncio.gather(*(one_connection() for _ in range(IN_FLIGHT)))


def _instructions(pid: int, dump_dir: Path, name: str) -> int:
    subprocess.run(["callgrind_control", "-d", name, str(pid)], check=True, capture_output=True)
    newest = max(dump_dir.glob("callgrind.out.*"), key=lambda path: path.stat().st_mtime)
    for line in newest.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{newest} has no instruction total")


@contextmanager
def _under_callgrind(
    name: str, command: list[str], env: dict[str, str], port: int, dump_dir: Path
) -> Iterator[tuple[str, Server]]:
    dump_dir.mkdir(parents=True, exist_ok=True)
    out = dump_dir / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    server = Server(name, [*valgrind, *command], 1, dump_dir / f"{name}.log", env)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_until(f"{url}/api/health/live", None, timeout=STARTUP_TIMEOUT_S)
        yield url, server
    finally:
        server.stop()


def _per_route(
    url: str, server: Server, routes: list[Route], token: str, dump_dir: Path
) -> dict[str, float]:
    """M instructions per request of each route."""
    figures = {}
    for route in routes:
        asyncio.run(_send(url, route, token, WARM_UP))
        subprocess.run(
            ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
        )
        asyncio.run(_send(url, route, token, REQUESTS))
        total = _instructions(server.pid, dump_dir, route.name.split()[0].rstrip(","))
        figures[route.name] = total / REQUESTS / 1e6
        print(f"<!-- {server.name} {route.name}: {figures[route.name]:.2f} M -->", flush=True)
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sora2-api-cg-") as tmp:
        workdir = Path(tmp)
        database_url = os.environ.get("DATABASE_URL", f"sqlite:///{workdir / 'cg.db'}")
        with _api(database_url, workdir) as (url, _server):
            port = int(url.rsplit(":", 1)[1])
            env = api_environment(database_url, workdir, port)
            token = asyncio.run(_register(url))
            done = completed_video(url, token, env, workdir)
            videos = [asyncio.run(_create_one(url, token)) for _ in range(SETUP_VIDEOS)]
        routes = [r for r in hot_routes(videos[0], done) if r.connections == CONNECTIONS]
        ours_command = [sys.executable, "-m", "sora2", "serve", "api", "--workers", "1"]
        with _under_callgrind("api", ours_command, env, port, workdir / "ours") as (url, server):
            ours = _per_route(url, server, routes, token, workdir / "ours")
        anchor_port = free_port()
        anchor_command = [sys.executable, "-m", "bench._lean_api", "--port", str(anchor_port)]
        anchor_env = env | CHILD_PYTHON_ENV
        with _under_callgrind(
            "anchor", anchor_command, anchor_env, anchor_port, workdir / "anchor"
        ) as (url, server):
            anchor = _per_route(url, server, routes, token, workdir / "anchor")
        kind = "SQLite" if database_url.startswith("sqlite") else "PostgreSQL"
        print(f"| route ({kind}) | ours M instr/req | anchor M instr/req | ratio |")
        print("|---|---:|---:|---:|")
        for route in routes:
            ratio = ours[route.name] / anchor[route.name]
            print(
                f"| {route.name} | {ours[route.name]:.2f} | {anchor[route.name]:.2f} | "
                f"**{ratio:.1f}x** |"
            )


if __name__ == "__main__":
    main()
