"""deploy/: every command in the Procfile, the systemd units and compose.yaml is one the CLI
accepts; and the processes compose.yaml names, started on loopback against PostgreSQL and an S3
server, lose an api and a worker to SIGKILL mid-run without losing or repeating a video."""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import psutil
import pytest
import yaml

from sora2.cli import build_parser
from tests.fakes.s3 import S3Server
from tests.fakes.servers import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POSTGRES_ADMIN_DSN = os.environ.get(
    "SORA2_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
VIDEOS = 6
PASSWORD = "Deploy-test-pw-1"


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def _sora2_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, arguments after `sora2`) for every sora2 command in deploy/."""
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            words = shlex.split(command)
            assert words[0] == "sora2", f"Procfile {name}: {command}"
            yield f"Procfile {name}", words[1:]
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.read_string(unit.read_text())
        words = shlex.split(parser["Service"]["ExecStart"])
        assert Path(words[0]).name == "sora2", f"{unit.name}: {words[0]}"
        yield unit.name, words[1:]
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if service.get("image") == "sora2:latest":
            assert command[0] == "sora2", f"compose {name}: {command}"
            yield f"compose {name}", command[1:]


def test_every_command_in_deploy_is_one_the_cli_accepts() -> None:
    commands = list(_sora2_commands())
    assert len(commands) >= 10
    for where, arguments in commands:
        try:
            build_parser().parse_args(arguments)
        except SystemExit as error:
            pytest.fail(f"{where}: `sora2 {shlex.join(arguments)}` is refused ({error.code})")


def test_compose_runs_two_apis_two_workers_a_web_postgres_and_minio() -> None:
    services = _compose()["services"]
    roles = sorted(
        " ".join(service["command"][1:3])
        for service in services.values()
        if service.get("image") == "sora2:latest"
    )
    assert roles == ["db upgrade", *["serve api"] * 2, "serve web", *["serve worker"] * 2]
    images = {str(service.get("image")).split(":")[0] for service in services.values()}
    assert {"postgres", "minio/minio"} <= images


# --- the compose deployment, run on loopback ---------------------------------------------------


def _interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` against `shell`."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        if shell.get(name):
            return shell[name]
        if operator == ":?":
            raise AssertionError(f"compose needs {name}: {argument}")
        return argument

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


@dataclass
class Deployment:
    compose: dict[str, Any]
    workdir: Path
    database_url: str
    s3: S3Server
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def data_dir(self, name: str, service: dict[str, Any]) -> Path:
        # A named volume is shared by the services that mount it, as on one Docker host.
        volumes = [str(volume).split(":")[0] for volume in service.get("volumes", [])]
        return self.workdir / (f"volume-{volumes[0]}" if volumes else f"disk-{name}")

    def environment(self, name: str) -> dict[str, str]:
        service = self.compose["services"][name]
        shell = {"JWT_SECRET": "deploy-test-" + "j" * 40}
        env = {
            key: _interpolate(str(value), shell) for key, value in service["environment"].items()
        }
        # Where the compose network's host names are, on loopback.
        env["DATABASE_URL"] = self.database_url
        addresses = {"minio:9000": self.s3.endpoint.removeprefix("http://")}
        addresses |= {f"{api}:3101": f"127.0.0.1:{port}" for api, port in self.ports.items()}
        for key, value in env.items():
            for host, local in addresses.items():
                value = value.replace(host, local)
            env[key] = value.replace("0.0.0.0", "127.0.0.1")  # loopback only, here
        data_dir = self.data_dir(name, service)
        return (
            os.environ
            | env
            | {
                "DATA_DIR": str(data_dir),
                "LOG_DIR": str(self.workdir / "logs" / name),
                "API_PORT": str(self.ports.get(name, 3101)),
                "WEB_PORT": str(self.ports.get(name, 3200)),
                # Test speed only: cheap password hashes, quick polls, a short lease to take over.
                "PASSWORD_HASH_MEMORY_KIB": "1024",
                "WORKER_IDLE_POLL_MS": "100",
                "WORKER_PROVIDER_POLL_MS": "200",
                "WORKER_LEASE_SECONDS": "3",
            }
        )

    def run_once(self, name: str) -> None:
        command = self.compose["services"][name]["command"]
        result = subprocess.run(
            [sys.executable, "-m", *command], env=self.environment(name),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    def start(self, name: str) -> None:
        command = self.compose["services"][name]["command"]
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", *command],
            env=self.environment(name),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, name: str) -> None:
        """SIGKILL to every process of the service at once: its machine went away."""
        parent = psutil.Process(self.processes[name].pid)
        for process in [*parent.children(recursive=True), parent]:
            process.send_signal(signal.SIGKILL)
        self.processes[name].wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


async def _postgres(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture
async def deployment(tmp_path: Path, s3_server: S3Server) -> AsyncIterator[Deployment]:
    name = f"sora2_deploy_{uuid.uuid4().hex[:10]}"
    try:
        await _postgres(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as error:
        pytest.skip(f"needs PostgreSQL at {POSTGRES_ADMIN_DSN}: {error}")
    compose = _compose()
    bucket = re.sub(r"^s3://([^/]+).*", r"\1", compose["x-environment"]["STORAGE_URL"])
    client = s3_server.client()
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    for old in s3_server.keys(bucket):
        client.delete_object(Bucket=bucket, Key=old)
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    running = Deployment(compose, tmp_path, f"{base}/{name}", s3_server)
    running.ports = {"api-1": free_port(), "api-2": free_port(), "web": free_port()}
    try:
        yield running
    finally:
        running.stop_all()
        await _postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def _bucket_of(deployment: Deployment) -> str:
    return re.sub(r"^s3://([^/]+).*", r"\1", deployment.compose["x-environment"]["STORAGE_URL"])


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_the_compose_deployment_loses_an_api_and_a_worker_and_no_video(
    deployment: Deployment,
) -> None:
    deployment.run_once("migrate")
    for name in ("api-1", "api-2", "worker-1", "worker-2", "web"):
        deployment.start(name)
    api_1, api_2, web = (deployment.url(n) for n in ("api-1", "api-2", "web"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for url in (f"{api_1}/api/health/live", f"{api_2}/api/health/live", f"{web}/healthz"):
            await _until(url, lambda url=url: _answers(http, url), timeout=60)

        # A user and their videos, through the web (its proxy balances over both apis).
        async with http.post(
            f"{web}/api/proxy/auth/register",
            json={"email": "deploy@example.com", "password": PASSWORD, "nickname": "D"},
        ) as response:
            assert response.status == 201, await response.text()
            bearer = {"Authorization": f"Bearer {(await response.json())['accessToken']}"}
        ids = []
        for n in range(VIDEOS):
            async with http.post(
                f"{web}/api/proxy/videos",
                headers=bearer,
                json={
                    "prompt": f"a paper boat, take {n}",
                    "model": "sora-2",
                    "seconds": 4,
                    "size": "720x1280",
                },
            ) as response:
                assert response.status == 202, await response.text()
                ids.append((await response.json())["id"])  # fmt: skip

        # Reads go on through the web the whole time, api-1's death included; none may fail.
        failed_reads: list[str] = []
        reads = 0

        async def read_forever() -> None:
            nonlocal reads
            while True:
                try:
                    async with http.get(f"{web}/api/proxy/videos", headers=bearer) as response:
                        if response.status != 200:
                            failed_reads.append(f"{response.status}")
                except aiohttp.ClientError as error:
                    failed_reads.append(type(error).__name__)
                reads += 1
                await asyncio.sleep(0.05)

        reader = asyncio.create_task(read_forever())
        try:
            worker_1 = psutil.Process(deployment.processes["worker-1"].pid)

            async def worker_1_is_rendering() -> bool:
                return bool(worker_1.children())

            await _until("worker-1 to render", worker_1_is_rendering, timeout=120)
            deployment.kill("api-1")
            deployment.kill("worker-1")

            async def all_final() -> list[dict[str, Any]] | None:
                videos = []
                for video_id in ids:
                    async with http.get(f"{web}/api/proxy/videos/{video_id}", headers=bearer) as r:
                        videos.append(await r.json())
                done = all(v["status"] in {"completed", "failed", "cancelled"} for v in videos)
                return videos if done else None

            videos = await _until("every video to finish", all_final, timeout=300)
        finally:
            reader.cancel()
        assert [v["status"] for v in videos] == ["completed"] * VIDEOS
        assert reads > 0
        assert failed_reads == []

        # The files are in the bucket, whole, served from there through the web by the
        # surviving api...
        stored = deployment.s3.keys(_bucket_of(deployment))
        assert len(stored) == 2 * VIDEOS
        for video in videos:
            content = f"{web}/api/proxy{video['contentUrl'].removeprefix('/api')}"
            async with http.get(content, headers=bearer) as response:
                body = await response.read()
            assert response.status == 200
            assert len(body) in stored.values()
            assert body[4:8] == b"ftyp"

    # ...and nowhere else: no process kept a copy on its own disk.
    for path in deployment.workdir.rglob("*"):
        if path.is_file() and path.suffix in {".mp4", ".jpg"}:
            assert "local-provider" in path.parts, f"a stray copy: {path}"

    # Each video was charged once, never refunded, and has one finished job.
    connection = await asyncpg.connect(deployment.database_url)
    try:
        charges = await connection.fetch(
            "SELECT video_id, type FROM credit_transactions WHERE video_id IS NOT NULL"
        )
        jobs = await connection.fetch("SELECT video_id, status FROM jobs")
    finally:
        await connection.close()
    assert sorted((r["video_id"], r["type"]) for r in charges) == sorted(
        (video_id, "consume") for video_id in ids
    )
    assert sorted((r["video_id"], r["status"]) for r in jobs) == sorted(
        (video_id, "done") for video_id in ids
    )
