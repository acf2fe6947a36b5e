"""The web service as users run it (`sora2 serve web`, a real process): memory, metrics, logs."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.fakes.backend import MiB
from tests.fakes.servers import RunningServer, free_port
from tests.proxy.conftest import eventually


class WebProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log_dir: Path) -> None:
        self.process = process
        self.port = port
        self.log_dir = log_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def start(api_url: str, *, open_files: int | None = None, **env: str) -> WebProcess:
        port = free_port()
        log_dir = tmp_path / "logs"
        environment = {
            **os.environ,
            "APP_ENV": "production",
            "JWT_SECRET": "x" * 40,
            "API_URL": api_url,
            "WEB_PORT": str(port),
            "LOG_DIR": str(log_dir),
            "DATA_DIR": str(tmp_path / "data"),
            **env,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "sora2", "serve", "web", "--workers", "1"],
            env=environment,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=None if open_files is None else lambda: _lower_soft_limit(open_files),
        )
        started.append(process)
        return WebProcess(process, port, log_dir)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _lower_soft_limit(soft: int) -> None:
    """What many systems start a service with: a soft limit of 1024 under a higher hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def wait_until_serving(web: WebProcess, session: aiohttp.ClientSession) -> None:
    async def answers() -> bool:
        try:
            async with session.get(web.url + "/healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            assert web.process.poll() is None, "the web service exited"
            return False

    await eventually(answers, timeout=15)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_256_mib_download_streams_in_flat_memory(
    backend: RunningServer, start_web, session: aiohttp.ClientSession
) -> None:
    web = start_web(backend.url)
    await wait_until_serving(web, session)
    proxy_process = psutil.Process(web.process.pid)
    async with session.get(web.url + "/api/proxy/echo/warm-up") as response:
        await response.read()
    baseline = proxy_process.memory_info().rss
    peak = baseline
    received = 0
    async with session.get(web.url + "/api/proxy/big?mib=256") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(256 * MiB)
        async for chunk in response.content.iter_chunked(1024 * 1024):
            received += len(chunk)
            peak = max(peak, proxy_process.memory_info().rss)
    assert received == 256 * MiB
    growth = (peak - baseline) / MiB
    assert growth < 32, f"proxy RSS grew by {growth:.1f} MiB"


async def test_metrics_and_healthz_are_served(
    backend: RunningServer, start_web, session: aiohttp.ClientSession
) -> None:
    web = start_web(backend.url)
    await wait_until_serving(web, session)
    async with session.get(web.url + "/api/proxy/echo/x") as response:
        assert response.status == 200
    async with session.get(web.url + "/api/proxy/..%2fsecret") as response:
        assert response.status == 400
    async with session.get(web.url + "/healthz") as response:
        assert (await response.json())["status"] == "ok"
    async with session.get(web.url + "/metrics") as response:
        text = await response.text()
    assert 'sora2_proxy_requests_total{status_class="2xx"} 1.0' in text
    assert 'sora2_proxy_requests_total{status_class="4xx"} 1.0' in text
    assert 'sora2_proxy_upstream_attempts_total{outcome="response"} 1.0' in text
    assert "sora2_proxy_circuit_state 0.0" in text
    assert "sora2_proxy_request_duration_seconds_bucket" in text
    assert "sora2_proxy_response_bytes_total" in text


async def test_one_log_line_per_request_without_secrets(
    backend: RunningServer, start_web, session: aiohttp.ClientSession
) -> None:
    web = start_web(backend.url)
    await wait_until_serving(web, session)
    headers = {
        "Authorization": "Bearer sekrit-bearer",
        "Cookie": "access=sekrit-cookie",
        "X-Request-ID": "trace-42",
    }
    async with session.post(
        web.url + "/api/proxy/echo/login?token=sekrit-query&page=2&email=sekrit@example.com",
        json={"password": "sekrit-password"},
        headers=headers,
    ) as response:
        assert response.status == 200
    log_file = web.log_dir / "web.log"

    def logged() -> bool:
        return log_file.exists() and "trace-42" in log_file.read_text()

    await eventually(logged)
    lines = [line for line in log_file.read_text().splitlines() if "trace-42" in line]
    assert len(lines) == 1
    line = lines[0]
    # Only names known to be harmless keep their values (an allowlist: `email` is hidden too).
    assert "POST /api/proxy/echo/login?token=***&page=2&email=*** 200 attempts=1" in line
    assert "sekrit" not in log_file.read_text()


async def test_production_errors_carry_no_internal_detail(
    start_web, session: aiohttp.ClientSession
) -> None:
    api_port = free_port()
    web = start_web(f"http://127.0.0.1:{api_port}", PROXY_REQUEST_TIMEOUT_MS="300")
    await wait_until_serving(web, session)
    async with session.get(web.url + "/api/proxy/videos") as response:
        body = await response.json()
        server = response.headers["Server"]
    assert response.status == 503
    assert set(body) == {"error", "message", "details", "requestId"}
    assert "cause" not in body["details"]
    assert "Traceback" not in str(body)
    # No internal address, log path or command; no versions in Server.
    text = str(body)
    assert str(api_port) not in text
    assert "127.0.0.1" not in text
    assert "apiUrl" not in body["details"]
    assert "logs/" not in text
    assert "sora2 " not in text
    assert server == "sora2"
    async with session.get(web.url + "/healthz") as response:
        assert response.headers["Server"] == "sora2"


async def test_invalid_settings_are_reported_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sora2", "serve", "web"],
        env={**os.environ, "WEB_PORT": "99999", "API_URL": "127.0.0.1:3101"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "WEB_PORT" in result.stderr
    assert "API_URL" in result.stderr
    assert "must be an absolute http(s) URL" in result.stderr
    assert "Traceback" not in result.stderr


async def test_the_web_raises_its_open_file_limit_to_the_hard_limit(
    backend: RunningServer, start_web, session: aiohttp.ClientSession
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    web = start_web(backend.url, open_files=256)
    await wait_until_serving(web, session)
    assert psutil.Process(web.process.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
