"""The api's instructions per request under callgrind, by route: a load-independent cost.

The api's req/s and CPU time move with everyone else's load on the shared machine; the number of
instructions it executes per request (all its threads) does not, so this is the figure to judge a
change of the api by. One `sora2 serve api` (production settings, SQLite unless `DATABASE_URL`
names a PostgreSQL database) runs under callgrind; per route the counters are zeroed, `REQUESTS`
requests are sent (8 in flight) and the dump's total is divided by them.
Run: `.venv/bin/python -m bench._api_instructions` (about a minute).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench._instructions import STARTUP_TIMEOUT_S
from bench._processes import Server, free_port
from bench.api_bench import CREATE_BODY, _create_one, _register, _sora2, api_environment

REQUESTS = 100
IN_FLIGHT = 8


async def _send(url: str, method: str, token: str, count: int, body: object | None) -> None:
    left = count
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one_connection() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with http.request(method, url, json=body) as response:
                    await response.read()
                    if response.status >= 400:
                        raise RuntimeError(f"{method} {url}: HTTP {response.status}")

        await asyncio.gather(*(one_connection() for _ in range(IN_FLIGHT)))


def _instructions(pid: int, dump_dir: Path, name: str) -> int:
    subprocess.run(["callgrind_control", "-d", name, str(pid)], check=True, capture_output=True)
    newest = max(dump_dir.glob("callgrind.out.*"), key=lambda path: path.stat().st_mtime)
    for line in newest.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{newest} has no instruction total")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sora2-api-cg-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        database_url = os.environ.get("DATABASE_URL", f"sqlite:///{workdir / 'cg.db'}")
        env = api_environment(database_url, workdir, port)
        _sora2("db", "upgrade", env=env)
        out = workdir / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        server = Server(
            "api", [*command, sys.executable, "-m", "sora2", "serve", "api", "--workers", "1"], 1,
            workdir / "api.log", env,
        )  # fmt: skip
        server.start()
        try:
            url = f"http://127.0.0.1:{port}"
            server.wait_until(f"{url}/api/health/live", None, timeout=STARTUP_TIMEOUT_S)
            token = asyncio.run(_register(url))
            video = asyncio.run(_create_one(url, token))
            routes: list[tuple[str, str, str, object | None]] = [
                ("create", "POST", "/api/videos", CREATE_BODY),
                ("list", "GET", "/api/videos?limit=20", None),
                ("get", "GET", f"/api/videos/{video}", None),
                ("balance", "GET", "/api/credits/balance", None),
                ("me", "GET", "/api/auth/me", None),
            ]
            print("| route | M instructions/request |\n|---|---:|")
            for name, method, path, body in routes:
                asyncio.run(_send(url + path, method, token, 30, body))  # warm up
                subprocess.run(
                    ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
                )
                asyncio.run(_send(url + path, method, token, REQUESTS, body))
                total = _instructions(server.pid, workdir, name)
                print(f"| {name} | {total / REQUESTS / 1e6:.2f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
