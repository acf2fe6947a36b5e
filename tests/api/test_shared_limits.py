"""Sign-in, sign-up and generate limits hold across api processes sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest

from sora2.settings import Settings
from tests.api.conftest import is_postgres, make_settings
from tests.api.harness import PASSWORD, wait_for
from tests.fakes.servers import free_port


def _environment(settings: Settings, port: int) -> dict[str, str]:
    return os.environ | {
        "APP_ENV": "test",
        "DATABASE_URL": str(settings.database_url),
        "DATA_DIR": str(settings.data_dir),
        "LOG_DIR": str(settings.log_dir),
        "JWT_SECRET": str(settings.jwt_secret),
        "PASSWORD_HASH_MEMORY_KIB": "1024",
        "API_EMBEDDED_WORKER": "false",
        "API_PORT": str(port),
        "LOGIN_LIMIT_PER_IP": "3",
        "LOGIN_LIMIT_PER_ACCOUNT": "2",
        "REGISTER_LIMIT_PER_IP": "2",
        "GENERATE_LIMIT_PER_USER": "2",
    }


@pytest.fixture
async def two_apis(database_url: str, tmp_path: Path) -> AsyncIterator[list[str]]:
    settings = make_settings(database_url, tmp_path)
    if not is_postgres(settings):
        pytest.skip("limits are shared through PostgreSQL; on SQLite each process counts alone")
    from tests.api.conftest import empty_tables

    await empty_tables(settings.resolved_database_url)
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "sora2", "serve", "api", "--workers", "1"],
            env=_environment(settings, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        async with aiohttp.ClientSession() as http:
            for url, process in zip(urls, processes, strict=True):

                async def answering(
                    url: str = url, process: subprocess.Popen[bytes] = process
                ) -> bool:
                    try:
                        async with http.get(f"{url}/api/health/live") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        assert process.poll() is None, "an api process exited"
                        return False

                await wait_for(answering, timeout=30, interval=0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.wait, 20)


async def _post(
    http: aiohttp.ClientSession, url: str, body: Mapping[str, object], **headers: str
) -> tuple[int, dict[str, object]]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_sign_in_and_sign_up_limits_count_across_both_apis(two_apis: list[str]) -> None:
    first, second = two_apis
    async with aiohttp.ClientSession() as http:
        address = {"X-Forwarded-For": "198.51.100.20"}
        signups = [
            (await _post(http, f"{url}/api/auth/register", {
                "email": f"s{n}@example.com", "password": PASSWORD, "nickname": "S"},
                **address))[0]
            for n, url in enumerate([first, second, first])
        ]  # fmt: skip
        assert signups == [201, 201, 429]

        attempts = []
        for n, url in enumerate([first, second, first, second]):
            wrong = {"email": f"nobody{n}@example.com", "password": "Wrong-pass-1"}
            status, _ = await _post(
                http, f"{url}/api/auth/login", wrong, **{"X-Forwarded-For": "198.51.100.30"}
            )
            attempts.append(status)
        assert attempts == [401, 401, 401, 429]

        wrong = {"email": "s0@example.com", "password": "Wrong-pass-1"}
        per_account = [
            (await _post(http, f"{url}/api/auth/login", wrong,
                         **{"X-Forwarded-For": f"203.0.113.{n}"}))[0]
            for n, url in enumerate([second, first, second])
        ]  # fmt: skip
        assert per_account == [401, 401, 429]


async def test_the_generate_limit_counts_across_both_apis(two_apis: list[str]) -> None:
    first, second = two_apis
    async with aiohttp.ClientSession() as http:
        status, session = await _post(
            http,
            f"{first}/api/auth/register",
            {"email": "maker@example.com", "password": PASSWORD, "nickname": "M"},
        )
        assert status == 201
        bearer = {"Authorization": f"Bearer {session['accessToken']}"}
        video = {"prompt": "a lighthouse at dusk", "model": "sora-2", "seconds": 4}
        answers = [
            await _post(http, f"{url}/api/videos", video, **bearer)
            for url in (first, second, first)
        ]
    assert [status for status, _ in answers] == [202, 202, 429]
    refused = answers[2][1]
    assert "videos started" in str(refused["message"])
