"""`python -m bench scale`: what a second api process and a second worker buy, and what a read
from S3 costs against the local folder.

1. Requests/s through the web (`sora2 serve web`, one process) to `GET /api/proxy/videos` with
   `sora2 serve api --workers 1`, then `--workers 2` (SO_REUSEPORT), wrk with 32 connections;
   and the same list from the api directly, to tell the web's share from the api's.
2. Videos per minute with one, then two `sora2 serve worker` processes (local renderer, 4 s
   1280x720 clips): the time from starting the workers until every queued video is completed.
3. `GET /api/videos/{id}/content` (a whole rendered clip, and a 64 KiB `Range`) from an api on the
   folder store against one on an S3 bucket (moto's S3 server on loopback), the files copied
   there by `sora2 storage migrate`.

Everything shares the machine's 2 cores with wrk (pinned to core 0): the figures compare
configurations measured in the same run, not absolute capacity. PostgreSQL when it answers on
127.0.0.1:5432 (several processes need it to share the queue well), else SQLite.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from bench._processes import free_port, http_get
from bench._wrk import Wrk, WrkResult
from bench.api_bench import POSTGRES_ADMIN, api_environment

CONNECTIONS = 32
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
}


def _sora2(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sora2", *args],
        env=os.environ | env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"sora2 {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


@contextmanager
def _process(command: Sequence[str], env: dict[str, str], log: Path) -> Iterator[int]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command), env=os.environ | env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(url, timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def _postgres_answers() -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@contextmanager
def _database(workdir: Path) -> Iterator[str]:
    if not _postgres_answers():
        yield f"sqlite:///{workdir / 'scale.db'}"
        return
    name = f"sora2_scale_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Stack:
    """The api, web and workers of one run, sharing a database, a data folder and a store."""

    def __init__(self, stack: ExitStack, workdir: Path, database_url: str) -> None:
        self._stack = stack
        self.workdir = workdir
        self.database_url = database_url

    def env(self, **extra: str) -> dict[str, str]:
        base = api_environment(self.database_url, self.workdir, 0)
        base.pop("API_PORT")
        return base | {
            "VIDEO_PROVIDER": "local",
            "WORKER_IDLE_POLL_MS": "100",
            "WORKER_PROVIDER_POLL_MS": "200",
            "GENERATE_LIMIT_PER_USER": "100000",
        } | extra  # fmt: skip

    def api(self, workers: int, **extra: str) -> str:
        port = free_port()
        self._stack.enter_context(
            _process(
                [sys.executable, "-m", "sora2", "serve", "api", "--workers", str(workers)],
                self.env(API_PORT=str(port), **extra),
                self.workdir / f"api-{port}.out",
            )
        )
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/api/health/live")
        return url

    def web(self, api_url: str) -> str:
        port = free_port()
        self._stack.enter_context(
            _process(
                [sys.executable, "-m", "sora2", "serve", "web", "--workers", "1"],
                self.env(WEB_PORT=str(port), API_URL=api_url),
                self.workdir / f"web-{port}.out",
            )
        )
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/healthz")
        return url


async def _register(api: str) -> str:
    async with aiohttp.ClientSession() as http:
        body = {"email": f"s{uuid.uuid4().hex[:8]}@example.com", "password": "Scale-pw-2026",
                "nickname": "S"}  # fmt: skip
        async with http.post(f"{api}/api/auth/register", json=body) as response:
            return str((await response.json())["accessToken"])


async def _create(api: str, token: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    ids = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for n in range(count):
            body = {"prompt": f"A lighthouse in a storm, take {n}", "seconds": 4,
                    "size": "1280x720"}  # fmt: skip
            async with http.post(f"{api}/api/videos", json=body) as response:
                ids.append(str((await response.json())["id"]))
    return ids


async def _until_completed(api: str, token: str, ids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        pending = set(ids)
        while pending:
            for video_id in list(pending):
                async with http.get(f"{api}/api/videos/{video_id}") as response:
                    status = (await response.json())["status"]
                if status == "completed":
                    pending.discard(video_id)
                elif status in ("failed", "cancelled"):
                    raise RuntimeError(f"video {video_id} ended {status}")
            await asyncio.sleep(0.2)


def _best(wrk: Wrk, url: str, rounds: int, seconds: float, headers: Sequence[str]) -> WrkResult:
    results = [wrk.run(url, CONNECTIONS, seconds, headers) for _ in range(rounds)]
    best = max(results, key=lambda r: r.rate)
    if best.non_2xx_3xx or best.socket_errors:
        raise RuntimeError(f"{url}: {best.non_2xx_3xx} errors, {best.socket_errors} socket errors")
    return best


def _requests_through_web(
    stack: Stack, wrk: Wrk, token: str, rounds: int, seconds: float
) -> list[str]:
    """Each configuration started afresh in every round, the rounds interleaved, the best kept:
    on a shared machine a single round is mostly noise."""
    auth = [f"Authorization: Bearer {token}"]
    best: dict[tuple[str, int], WrkResult] = {}
    for _ in range(rounds):
        for apis in (1, 2):
            with ExitStack() as scope:
                inner = Stack(scope, stack.workdir, stack.database_url)
                api = inner.api(apis)
                web = inner.web(api)
                for path, url in (
                    ("through the web", f"{web}/api/proxy/videos?limit=20"),
                    ("api directly", f"{api}/api/videos?limit=20"),
                ):
                    _best(wrk, url, 1, 1, auth)  # warm-up
                    result = _best(wrk, url, 1, seconds, auth)
                    if (path, apis) not in best or result.rate > best[path, apis].rate:
                        best[path, apis] = result
    rows = []
    for path in ("through the web", "api directly"):
        for apis in (1, 2):
            result = best[path, apis]
            rows.append(
                f"| {path}, api x{apis} | {result.rate:,.0f} | {result.p50_us / 1000:.1f} | "
                f"{result.p99_us / 1000:.1f} | {result.rate / best[path, 1].rate:.2f} |"
            )
    return rows


def _videos_per_minute(stack: Stack, api: str, token: str, videos: int) -> list[str]:
    rows = []
    per_minute = {}
    for workers in (1, 2):
        ids = asyncio.run(_create(api, token, videos))
        with ExitStack() as scope:
            started = time.perf_counter()
            for number in range(workers):
                scope.enter_context(
                    _process(
                        [sys.executable, "-m", "sora2", "serve", "worker"],
                        stack.env(),
                        stack.workdir / f"worker-{workers}-{number}.out",
                    )
                )
            asyncio.run(_until_completed(api, token, ids))
            elapsed = time.perf_counter() - started
        per_minute[workers] = videos / elapsed * 60
        rows.append(
            f"| {workers} | {videos} | {elapsed:.1f} | {per_minute[workers]:.1f} | "
            f"{per_minute[workers] / per_minute[1]:.2f} |"
        )
    return rows


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return process, endpoint
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto's S3 server did not start")


def _read_cost(
    stack: Stack, wrk: Wrk, token: str, video_id: str, rounds: int, seconds: float
) -> list[str]:
    import boto3  # type: ignore[import-untyped]

    moto, endpoint = _start_moto()
    try:
        s3 = S3_CREDENTIALS | {"AWS_ENDPOINT_URL": endpoint}
        bucket = f"scale-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="bench",
            aws_secret_access_key="bench-secret", region_name="us-east-1",
        ).create_bucket(Bucket=bucket)  # fmt: skip
        _sora2("storage", "migrate", "--to", f"s3://{bucket}/media", env=stack.env(**s3))
        rows = []
        auth = f"Authorization: Bearer {token}"
        with ExitStack() as scope:
            inner = Stack(scope, stack.workdir, stack.database_url)
            apis = {
                "folder (DATA_DIR/media)": inner.api(1),
                "S3 (moto on loopback)": inner.api(1, STORAGE_URL=f"s3://{bucket}/media", **s3),
            }
            for what, headers in (
                ("whole clip", [auth]),
                ("Range 64 KiB", [auth, "Range: bytes=0-65535"]),
            ):
                baseline = 0.0
                for store, api in apis.items():
                    url = f"{api}/api/videos/{video_id}/content"
                    _best(wrk, url, 1, 1, headers)  # warm-up
                    result = _best(wrk, url, rounds, seconds, headers)
                    baseline = baseline or result.rate
                    rows.append(
                        f"| {what} | {store} | {result.rate:,.0f} | {result.p50_us / 1000:.1f} | "
                        f"{result.p99_us / 1000:.1f} | {result.rate / baseline:.2f} |"
                    )
        return rows
    finally:
        moto.terminate()
        moto.wait(10)


def run(quick: bool) -> str:
    rounds, seconds, videos = (1, 2.0, 2) if quick else (3, 5.0, 6)
    with (
        tempfile.TemporaryDirectory(prefix="sora2-scale-bench-") as tmp,
        _database(Path(tmp)) as database_url,
        ExitStack() as scope,
    ):
        workdir = Path(tmp)
        stack = Stack(scope, workdir, database_url)
        _sora2("db", "upgrade", env=stack.env())
        wrk = Wrk(workdir, cpu=0)
        api = stack.api(1)
        token = asyncio.run(_register(api))
        web_rows = _requests_through_web(stack, wrk, token, rounds, seconds)
        worker_rows = _videos_per_minute(stack, api, token, videos)
        read_rows = _read_cost(stack, wrk, token, _a_completed_video(api, token), rounds, seconds)
    database = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    return "\n".join(
        [
            f"## Scale: processes, workers, storage ({database}, best of {rounds})",
            "",
            "| `GET /api/videos?limit=20` (one web) | req/s | p50 ms | p99 ms | x one api |",
            "|---|---|---|---|---|",
            *web_rows,
            "",
            "| workers (local renderer, 4 s 1280x720) | videos | seconds | videos/min | x one |",
            "|---|---|---|---|---|",
            *worker_rows,
            "",
            "| `GET …/content` | store | req/s | p50 ms | p99 ms | x folder |",
            "|---|---|---|---|---|---|",
            *read_rows,
            "",
        ]
    )


def _a_completed_video(api: str, token: str) -> str:
    async def first() -> str:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.get(f"{api}/api/videos?status=completed&limit=1") as response,
        ):
            return str((await response.json())["items"][0]["id"])

    return asyncio.run(first())
