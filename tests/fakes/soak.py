"""A fault soak: videos through two `sora2 serve worker` processes on PostgreSQL against the fake
Videos API, with faults injected at random, then the paid-work invariants checked.

Faults (chosen by a seeded RNG, counted by kind):
- upstream, per request while the storm lasts: a create answered after the client's timeout (the
  job made), a reset after the request was acted on, 5xx, 429 with an odd `Retry-After`;
- the workers' database connections cut through a TCP relay (refused and dropped), then restored;
- a worker SIGKILLed or SIGTERMed, then started again;
- a user cancelling a video in the works (its upstream job is then abandoned).

Then, with the faults stopped, the soak waits (with a deadline) for every video to be final and
the outbox drained, and checks: every video is final; the jobs alive upstream are exactly the
completed videos' (one each); every abandoned upstream job was deleted; each user's balance is
the sum of their ledger; each video was charged once and refunded at most once (and only if it
did not complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from sora2.api.credits.models import CreditTransaction
from sora2.api.db import Database
from sora2.api.db.migrate import upgrade
from sora2.api.jobs.models import UpstreamStop
from sora2.api.providers.openai import OpenAIProvider
from sora2.api.users.models import User
from sora2.api.videos.models import FINAL_STATUSES, Video
from sora2.settings import Settings, load_settings
from tests.api.harness import RunningApi, running_api
from tests.api.tcp_relay import TcpRelay
from tests.fakes.fake_videos_api import FakeVideosAPI, Handler, VideosCall
from tests.fakes.servers import RunningServer, start_app

KEY = "sk-test-soak-000000000000000000000000"
TIMEOUT_MS = 300  # the provider's create timeout: a "create timeout" answers after 3 of these
ODD_RETRY_AFTER = ("1e11", "-3", "soon", "0", "0.2", "99999999999999999999", "Wed, 21 Oct 2015")
FINAL = frozenset(FINAL_STATUSES)


@dataclass(frozen=True)
class SoakPlan:
    seed: int
    videos: int = 8
    users: int = 2
    storm_seconds: float = 4.0  # how long faults are injected
    upstream_fault_rate: float = 0.25  # of upstream requests during the storm
    step_seconds: tuple[float, float] = (0.3, 0.8)  # between process, database and user faults
    settle_seconds: float = 45.0  # after the storm: the deadline for everything to be final
    workers: int = 2


@dataclass
class SoakReport:
    seed: int
    videos: Counter[str] = field(default_factory=Counter)  # by final status
    faults: Counter[str] = field(default_factory=Counter)
    generations_made: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"seed {self.seed}: {sum(self.videos.values())} videos "
            f"({', '.join(f'{n} {s}' for s, n in sorted(self.videos.items()))}) "
            f"in {self.seconds:.1f} s (settled {self.settle_seconds:.1f} s after the storm)",
            f"paid generations made upstream: {self.generations_made}",
            "faults injected: "
            + (", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none"),
            f"invariant violations: {len(self.violations)}",
            *(f"  - {violation}" for violation in self.violations),
        ]


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, migrated PostgreSQL database (plain URL), dropped afterwards."""
    name = f"sora2_soak_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
    database = Database(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        await upgrade(database)
    finally:
        await database.dispose()
    try:
        yield url
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Soak:
    def __init__(self, plan: SoakPlan, *, database_url: str, workdir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.database_url = database_url
        self.workdir = workdir
        self.report = SoakReport(seed=plan.seed)
        self.fake = FakeVideosAPI(keys=[KEY], polls_to_complete=3)
        self.fake.chaos = self._upstream_fault
        self.storming = False
        self.relay = TcpRelay(make_url(database_url).port or 5432)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.video_ids: list[str] = []
        self.tokens: list[str] = []

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> SoakReport:
        started = time.monotonic()
        upstream = await start_app(self.fake.app(), handler_cancellation=False)
        await self.relay.start()
        settings = self._settings(upstream)
        provider = OpenAIProvider.from_settings(settings)
        try:
            async with running_api(settings, provider) as api:
                self.workers = [self._start_worker(upstream, i) for i in range(self.plan.workers)]
                await self._create_videos(api)
                self.storming = True
                await self._storm(api, upstream)
                self.storming = False
                await self.relay.restore()
                calm = time.monotonic()
                await self._settle()
                self.report.settle_seconds = time.monotonic() - calm
                await self._stop_workers()
                await self._check()
        finally:
            self.storming = False
            await self._stop_workers()
            await self.relay.cut()
            await provider.close()
            await upstream.stop()
        self.report.generations_made = len(self.fake.made)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _settings(self, upstream: RunningServer) -> Settings:
        return load_settings(
            app_env="test",
            database_url=self.database_url,
            data_dir=self.workdir,
            log_dir=self.workdir / "logs",
            jwt_secret="soak-secret-" + "x" * 40,
            password_hash_memory_kib=1024,
            api_embedded_worker=False,
            register_limit_per_ip=10_000,
            generate_limit_per_user=10_000,
            video_provider="openai",
            openai_api_keys=KEY,
            openai_base_url=f"{upstream.url}/v1",
            openai_timeout_ms=TIMEOUT_MS,
        )

    def _worker_env(self, upstream: RunningServer) -> dict[str, str]:
        through_relay = make_url(self.database_url).set(port=self.relay.port)
        return {
            "APP_ENV": "test",
            "DATABASE_URL": through_relay.render_as_string(hide_password=False),
            "DATA_DIR": str(self.workdir),
            "LOG_DIR": str(self.workdir / "logs"),
            "JWT_SECRET": "soak-secret-" + "x" * 40,
            "VIDEO_PROVIDER": "openai",
            "OPENAI_BASE_URL": f"{upstream.url}/v1",
            "OPENAI_API_KEYS": KEY,
            "OPENAI_TIMEOUT_MS": str(TIMEOUT_MS),
            "WORKER_LEASE_SECONDS": "1.5",
            "WORKER_PROVIDER_POLL_MS": "50",
            "WORKER_IDLE_POLL_MS": "50",
            "JOB_RETRY_BASE_MS": "50",
            "JOB_RETRY_MAX_MS": "400",
            "JOB_MAX_ATTEMPTS": "8",
            "JOB_RETRY_AFTER_MAX_SECONDS": "1",
            # Nothing waits forever: a video not final by then fails (and is refunded).
            "JOB_DEADLINE_SECONDS": str(
                int(self.plan.storm_seconds + self.plan.settle_seconds / 2)
            ),
        }

    def _start_worker(self, upstream: RunningServer, number: int) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"worker-{number}.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "sora2", "serve", "worker"],
                env=os.environ | self._worker_env(upstream),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    async def _create_videos(self, api: RunningApi) -> None:
        for _ in range(self.plan.users):
            token, _ = await api.register()
            self.tokens.append(token)
        for number in range(self.plan.videos):
            token = self.tokens[number % len(self.tokens)]
            status, body, _ = await api.request(
                "POST",
                "/api/videos",
                token=token,
                json={"prompt": f"Soak video {number}: a kite over the dunes", "seconds": 4},
            )
            if status != 202:
                raise RuntimeError(f"creating soak video {number}: {status} {body}")
            self.video_ids.append(body["id"])

    # --- faults --------------------------------------------------------------------------

    async def _storm(self, api: RunningApi, upstream: RunningServer) -> None:
        ends = time.monotonic() + self.plan.storm_seconds
        while time.monotonic() < ends:
            await asyncio.sleep(self.rng.uniform(*self.plan.step_seconds))  # pacing, not a wait
            kind = self.rng.choice(("database_cut", "worker_kill", "worker_term", "user_cancel"))
            self.report.faults[kind] += 1
            if kind == "database_cut":
                await self.relay.cut()
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))  # the outage's length
                await self.relay.restore()
            elif kind in ("worker_kill", "worker_term"):
                await self._restart_worker(upstream, kind)
            else:
                await self._cancel_one(api)

    async def _restart_worker(self, upstream: RunningServer, kind: str) -> None:
        number = self.rng.randrange(len(self.workers))
        worker = self.workers[number]
        worker.send_signal(signal.SIGKILL if kind == "worker_kill" else signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
        self.workers[number] = self._start_worker(upstream, number)

    async def _cancel_one(self, api: RunningApi) -> None:
        number = self.rng.randrange(len(self.video_ids))
        token = self.tokens[number % len(self.tokens)]
        await api.request("POST", f"/api/videos/{self.video_ids[number]}/cancel", token=token)

    async def _upstream_fault(
        self, request: web.Request, call: VideosCall, handler: Handler
    ) -> web.StreamResponse | None:
        if not self.storming or self.rng.random() >= self.plan.upstream_fault_rate:
            return None
        is_create = request.method == "POST" and request.path == "/v1/videos"
        kinds = ["server_error", "rate_limited", "reset_after_send"]
        if is_create:
            kinds.append("create_timeout")
        if request.path.endswith("/content"):
            kinds.remove("reset_after_send")  # a cut download is a truncation, tested elsewhere
        kind = self.rng.choice(kinds)
        self.report.faults[f"upstream_{kind}"] += 1
        if kind == "server_error":
            status = self.rng.choice((500, 502, 503))
            return web.json_response({"error": {"message": "soak", "code": None}}, status=status)
        if kind == "rate_limited":
            retry_after = self.rng.choice(ODD_RETRY_AFTER)
            return web.json_response(
                {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
                status=429,
                headers={"Retry-After": retry_after},
            )
        answer = await handler(request)  # the work is done upstream…
        if kind == "create_timeout":
            await asyncio.sleep(3 * TIMEOUT_MS / 1000)  # …and answered after the client gave up
            return answer
        _reset(request)  # …and its answer never arrives
        return answer

    # --- the end -------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Waits (with the plan's deadline) until every video is final and the outbox empty."""
        deadline = time.monotonic() + self.plan.settle_seconds
        while time.monotonic() < deadline:
            if await self._settled():
                return
            await asyncio.sleep(0.1)

    async def _settled(self) -> bool:
        database = Database(self.database_url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with database.read_session() as session:
                active = await session.scalar(
                    select(func.count()).select_from(Video).where(Video.status.not_in(FINAL))
                )
                pending = await session.scalar(
                    select(func.count())
                    .select_from(UpstreamStop)
                    .where(UpstreamStop.done_at.is_(None))
                )
        finally:
            await database.dispose()
        return active == 0 and pending == 0

    async def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                await asyncio.to_thread(worker.wait, 30)
            except subprocess.TimeoutExpired:
                worker.kill()
                await asyncio.to_thread(worker.wait, 10)

    async def _check(self) -> None:
        database = Database(self.database_url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with database.read_session() as session:
                videos = list((await session.execute(select(Video))).scalars())
                users = list((await session.execute(select(User))).scalars())
                ledger = list((await session.execute(select(CreditTransaction))).scalars())
        finally:
            await database.dispose()
        self.report.videos = Counter(video.status for video in videos)
        self.report.violations = find_violations(
            videos, users, ledger, made=self.fake.made, alive=set(self.fake.videos)
        )
        if len(videos) != len(self.video_ids):
            self.report.violations.append(
                f"{len(self.video_ids)} videos were created, {len(videos)} are in the database"
            )


def find_violations(
    videos: list[Video],
    users: list[User],
    ledger: list[CreditTransaction],
    *,
    made: list[str],
    alive: set[str],
) -> list[str]:
    """The paid-work invariants, each broken one described."""
    found: list[str] = []
    kept: dict[str, str] = {}
    for video in videos:
        if video.status not in FINAL:
            found.append(f"video {video.id} is still {video.status}")
        if video.status == "completed":
            if video.provider_job_id is None:
                found.append(f"completed video {video.id} names no upstream job")
            else:  # stored as "<provider>/<upstream id>"
                kept[video.provider_job_id.rpartition("/")[2]] = video.id
    for job_id in sorted((set(made) - set(kept)) & alive):
        found.append(f"abandoned upstream job {job_id} was never deleted")
    for job_id, video_id in sorted(kept.items()):
        if job_id not in alive:
            found.append(f"completed video {video_id}'s upstream job {job_id} was deleted")
    for user in users:
        total = sum(entry.amount for entry in ledger if entry.user_id == user.id)
        if total != user.credits:
            found.append(f"user {user.id}: balance {user.credits} != sum(ledger) {total}")
    entries: dict[str, Counter[str]] = {}
    for entry in ledger:
        if entry.video_id is not None:
            entries.setdefault(entry.video_id, Counter())[entry.type] += 1
    for video in videos:
        seen = entries.get(video.id, Counter())
        refunds_due = 0 if video.status == "completed" else 1
        if seen["consume"] != 1:
            found.append(f"video {video.id} was charged {seen['consume']} times")
        if seen["refund"] != refunds_due:
            found.append(f"video {video.id} ({video.status}) was refunded {seen['refund']} times")
    return found


async def run_soak(plan: SoakPlan, *, database_url: str, workdir: Path) -> SoakReport:
    """Runs one soak against an empty, migrated PostgreSQL database (a plain URL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return await Soak(plan, database_url=database_url, workdir=workdir).run()


def new_seed() -> int:
    return random.SystemRandom().randrange(1, 2**31)
