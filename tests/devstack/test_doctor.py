"""`sora2 doctor` as a user runs it, against real listeners and a real stack."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.devstack.conftest import DevStack, Listener, scratch_environment
from tests.fakes.servers import RunningServer, free_port, start_app


def doctor_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sora2", "doctor", *args]


def run_doctor(folder: Path, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Exit status and findings by check name, from `sora2 doctor --json`."""
    result = subprocess.run(
        doctor_command("--json"),
        cwd=folder,
        env=scratch_environment(folder, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, _by_check(result.stdout)


async def run_doctor_async(folder: Path, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """The same while this test's event loop serves a fake api."""
    process = await asyncio.create_subprocess_exec(
        *doctor_command("--json"),
        cwd=folder,
        env=scratch_environment(folder, **env),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return int(process.returncode or 0), _by_check(stdout.decode())


def _by_check(stdout: str) -> dict[str, dict[str, Any]]:
    return {item["check"]: item for item in json.loads(stdout)["findings"]}


def fake_api(status: int, body: dict[str, Any]) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/api/health", health)
    return app


@pytest.fixture
async def healthy_api() -> AsyncIterator[RunningServer]:
    server = await start_app(fake_api(200, {"status": "ok", "checks": {"database": "ok"}}))
    yield server
    await server.stop()


def test_doctor_reports_a_stopped_api_and_a_held_port(
    tmp_path: Path, listeners: list[Listener]
) -> None:
    holder = Listener()
    listeners.append(holder)
    api_port = free_port()
    env = scratch_environment(
        tmp_path,
        API_PORT=str(api_port),
        API_URL=f"http://127.0.0.1:{api_port}",
        WEB_PORT=str(holder.port),
    )
    result = subprocess.run(
        doctor_command(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    table = " ".join(result.stdout.split())  # the table wraps long findings
    assert f"FAIL port {holder.port} (web) held by PID {os.getpid()} (" in table
    assert "pytest" in table  # the holder's command line
    assert f"FAIL api reachable nothing answers at API_URL http://127.0.0.1:{api_port}" in table
    assert "fix: start the api: sora2 dev" in table
    assert f"ok port {api_port} (api) free" in table
    assert holder.still_accepts()  # looked at, never touched


def test_doctor_sees_a_healthy_stack_of_this_checkout(shared_stack: DevStack) -> None:
    stack = shared_stack
    _, findings = run_doctor(
        stack.folder,
        API_PORT=str(stack.api_port),
        WEB_PORT=str(stack.web_port),
        API_URL=f"http://127.0.0.1:{stack.api_port}",
    )

    api_port = findings[f"port {stack.api_port} (api)"]
    assert api_port["status"] == "ok"
    assert "this checkout's sora2 dev" in api_port["detail"]
    assert findings["api health"]["status"] == "ok"
    assert findings["web proxy"]["status"] == "ok"


async def test_doctor_explains_the_localhost_versus_ipv6_mismatch(
    tmp_path: Path, healthy_api: RunningServer
) -> None:
    # The api listens on 127.0.0.1 only; API_URL names an address that resolves to ::1.
    code, findings = await run_doctor_async(
        tmp_path, API_URL=f"http://[::1]:{healthy_api.port}", API_PORT=str(healthy_api.port)
    )

    assert code == 1
    reach = findings["api reachable"]
    assert reach["status"] == "fail"
    assert "localhost → ::1 vs 127.0.0.1" in reach["detail"]
    assert reach["fix"] == f"set API_URL=http://127.0.0.1:{healthy_api.port}"


async def test_doctor_names_the_failing_health_check(tmp_path: Path) -> None:
    failing = {"status": "unhealthy", "checks": {"database": "unreachable: connection refused"}}
    server = await start_app(fake_api(503, failing))
    try:
        code, findings = await run_doctor_async(tmp_path, API_URL=server.url)
    finally:
        await server.stop()

    assert code == 1
    assert findings["api health"]["status"] == "fail"
    assert "database" in findings["api health"]["detail"]
    assert "connection refused" in findings["api health"]["detail"]


def test_doctor_still_runs_and_explains_invalid_settings(tmp_path: Path) -> None:
    code, findings = run_doctor(tmp_path, API_PORT="three-one-oh-one")

    assert code == 1
    assert findings["settings"]["status"] == "fail"
    assert "API_PORT" in findings["settings"]["detail"]
    # The other checks ran on the defaults rather than stopping at the first problem.
    assert "port 3101 (api)" in findings
    assert findings["data dir"]["status"] == "ok"


def test_doctor_flags_openai_without_keys_and_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")

    code, findings = run_doctor(tmp_path, VIDEO_PROVIDER="openai", DATA_DIR=str(blocker / "data"))

    assert code == 1
    assert findings["settings"]["status"] == "fail"
    assert "OPENAI_API_KEYS" in findings["settings"]["detail"]
    assert findings["video provider"]["status"] == "warn"  # not judged on relaxed settings
    assert findings["data dir"]["status"] == "fail"
    assert "DATA_DIR" in findings["data dir"]["fix"]


async def test_doctor_warns_about_a_degraded_api(tmp_path: Path) -> None:
    degraded = {
        "status": "degraded",
        "checks": {"database": "ok", "provider": {"status": "resting"}},
    }
    server = await start_app(fake_api(200, degraded))
    try:
        _, findings = await run_doctor_async(tmp_path, API_URL=server.url)
    finally:
        await server.stop()

    assert findings["api health"]["status"] == "warn"
    assert "degraded" in findings["api health"]["detail"]
    assert "provider: resting" in findings["api health"]["detail"]


def test_doctor_warns_when_the_open_file_limit_is_too_low_for_the_pool(tmp_path: Path) -> None:
    def low_hard_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    def doctor(**env: str) -> dict[str, Any]:
        result = subprocess.run(
            doctor_command("--json"),
            cwd=tmp_path,
            env=scratch_environment(tmp_path, **env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            preexec_fn=low_hard_limit,
        )
        return _by_check(result.stdout)["open files"]

    finding = doctor()
    assert finding["status"] == "warn"
    assert "1024" in finding["detail"]
    assert "PROXY_POOL_SIZE" in finding["detail"]
    assert "LimitNOFILE" in finding["fix"]
    assert doctor(PROXY_POOL_SIZE="300")["status"] == "ok"


async def test_doctor_checks_each_api_of_api_urls(
    tmp_path: Path, healthy_api: RunningServer
) -> None:
    stopped = f"http://127.0.0.1:{free_port()}"
    code, findings = await run_doctor_async(tmp_path, API_URLS=f"{healthy_api.url},{stopped}")

    assert code == 1
    assert findings["api health (api1)"]["status"] == "ok"
    assert healthy_api.url in findings["api health (api1)"]["detail"]
    assert findings["api reachable (api2)"]["status"] == "fail"
    assert f"API_URLS entry {stopped}" in findings["api reachable (api2)"]["detail"]
