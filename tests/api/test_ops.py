"""Operations: health, metrics, request ids, CORS, the embedded worker, admin, the commands."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy import text

from sora2.api.db import Database
from sora2.api.jobs.worker import until_database_answers
from sora2.settings import Settings
from tests.api.conftest import is_postgres, make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import PASSWORD, RunningApi, running_api, wait_for
from tests.api.tcp_relay import TcpRelay
from tests.api.test_videos import create
from tests.api.test_worker import until_status
from tests.fakes.servers import free_port

FRONTEND = "http://app.example:3200"


def sora2(
    *args: str, env: dict[str, str], timeout: float = 60, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sora2", *args],
        env=os.environ | env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_for(settings: Settings) -> dict[str, str]:
    return {
        "APP_ENV": "test",
        "DATABASE_URL": str(settings.database_url),
        "DATA_DIR": str(settings.data_dir),
        "LOG_DIR": str(settings.log_dir),
        "JWT_SECRET": str(settings.jwt_secret),
        "PASSWORD_HASH_MEMORY_KIB": "1024",
    }


async def test_health_reports_database_worker_and_provider(api: RunningApi) -> None:
    status, body, _ = await api.request("GET", "/api/health")
    assert status == 200
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["worker"] == {"status": "none", "heartbeatAgeSeconds": None}
    assert body["checks"]["provider"] == {"name": "scripted", "status": "ok"}
    assert body["status"] == "degraded"  # no worker has ever beaten
    assert (await api.request("GET", "/api/health/live"))[0] == 200
    assert (await api.request("GET", "/api/health/ready"))[1]["checks"] == {"database": "ok"}


async def test_embedded_worker_runs_jobs_and_beats(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    embedded = make_settings(database_url, tmp_path, api_embedded_worker=True)
    async with running_api(embedded, ScriptedProvider()) as api:
        token, _ = await api.register()
        _, video = await create(api, token)
        await until_status(api, token, video["id"], "completed")
        _, health, _ = await api.request("GET", "/api/health")
        assert health["status"] == "ok"
        assert health["checks"]["worker"]["status"] == "ok"
        assert health["checks"]["worker"]["heartbeatAgeSeconds"] < 5


async def test_health_names_the_database_when_it_is_unreachable(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    if not is_postgres(settings):
        pytest.skip("a SQLite file cannot become unreachable")
    target = urlsplit(database_url)
    relay = TcpRelay(target.port or 5432)
    await relay.start()
    through_relay = database_url.replace(f":{target.port}/", f":{relay.port}/")
    async with running_api(make_settings(through_relay, tmp_path), ScriptedProvider()) as api:
        assert (await api.request("GET", "/api/health"))[0] == 200
        token, _ = await api.register()
        # Read once first: the hot routes' own pool then holds a connection the cut will drop.
        assert (await api.request("GET", "/api/videos", token=token))[0] == 200
        await relay.cut()
        status, body, _ = await api.request("GET", "/api/health")
        assert status == 503
        assert body["checks"]["database"] == "unreachable"
        assert "database" in body["message"]
        assert (await api.request("GET", "/api/health/ready"))[0] == 503
        status, body, _ = await api.request("GET", "/api/auth/me", token="x")
        assert status == 401  # an invalid token is still refused without the database
        for method, path in (("GET", "/api/videos"), ("POST", "/api/videos")):
            status, body, response = await api.request(
                method, path, token=token, json={"prompt": "a heron"}
            )
            assert status == 503, body  # the database is out, not the api broken
            assert "database" in body["message"]
            assert response.headers["Retry-After"]
            assert body["requestId"] == response.headers["X-Request-ID"]
        await relay.restore()
        for method, path in (("GET", "/api/videos"), ("POST", "/api/videos")):
            status, body, _ = await api.request(
                method, path, token=token, json={"prompt": "a heron"}
            )
            assert status in (200, 202), body  # back as soon as the database is


async def test_metrics_count_requests_and_queue_depth(api: RunningApi) -> None:
    token, _ = await api.register()
    await create(api, token)
    status, text, response = await api.request("GET", "/metrics")
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    page = text.decode()
    assert 'sora2_api_requests_total{method="POST",route="/api/videos",status="202"} 1.0' in page
    assert 'sora2_jobs{status="queued"} 1.0' in page
    assert "sora2_job_duration_seconds" in page
    assert "sora2_provider_errors" in page


async def test_the_served_api_logs_request_ids_and_never_secrets(settings: Settings) -> None:
    """`sora2 serve api` as a process: the proxy's X-Request-ID is on its log lines; no secrets."""
    port = free_port()
    env = env_for(settings) | {"API_PORT": str(port), "API_EMBEDDED_WORKER": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", "api"],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def answering() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/health/live") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    assert process.poll() is None, "the api process exited"
                    return False

            await wait_for(answering, timeout=30, interval=0.1)
            async with http.post(
                f"http://127.0.0.1:{port}/api/auth/register",
                json={"email": "log@example.com", "password": "Sup3r-secret-pw", "nickname": "L"},
                headers={"X-Request-ID": "abc-123"},
            ) as response:
                assert response.headers["X-Request-ID"] == "abc-123"
                token = (await response.json())["accessToken"]
            async with http.get(
                f"http://127.0.0.1:{port}/api/health/live", headers={"X-Request-ID": "bad id!"}
            ) as response:
                assert response.headers["X-Request-ID"] != "bad id!"
            log_file = settings.log_dir / "api.log"

            async def logged() -> bool:  # lines are written in batches, every half second
                return "[abc-123] POST /api/auth/register 201" in log_file.read_text()

            await wait_for(logged, timeout=10, interval=0.1)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)
    assert process.returncode == 0  # SIGTERM is a graceful stop, and its last lines are kept
    log = log_file.read_text()
    assert "Application shutdown complete" in log
    assert "Sup3r-secret-pw" not in log
    assert token not in log


async def test_cors_allows_only_the_frontend(api: RunningApi) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    _, _, allowed = await api.request(
        "OPTIONS", "/api/auth/login", headers={"Origin": FRONTEND} | preflight
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    _, _, refused = await api.request(
        "OPTIONS", "/api/auth/login", headers={"Origin": "https://evil.example"} | preflight
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


async def test_unknown_routes_and_methods_answer_in_the_json_shape(api: RunningApi) -> None:
    status, body, _ = await api.request("GET", "/api/nothing-here")
    assert status == 404
    assert set(body) == {"error", "message", "details", "requestId"}
    status, body, _ = await api.request("PATCH", "/api/videos")
    assert status == 405
    assert body["error"] == "Method Not Allowed"


async def test_openapi_documents_are_served(api: RunningApi) -> None:
    for path in ("/openapi.json", "/api-docs.json"):
        status, body, _ = await api.request("GET", path)
        assert status == 200
        assert "/api/videos" in body["paths"]
    status, page, _ = await api.request("GET", "/api-docs")
    assert status == 200
    assert b"swagger" in page.lower()


async def test_cli_admin_bootstrap_and_admin_routes(api: RunningApi, settings: Settings) -> None:
    created = sora2(
        "user",
        "create",
        "--email",
        "Root@Example.com",
        "--password",
        PASSWORD,
        "--nickname",
        "Root",
        "--admin",
        env=env_for(settings),
    )
    assert created.returncode == 0, created.stderr
    assert "created admin root@example.com" in created.stdout
    # Without --password it is read from stdin (a prompt on a terminal), out of shell history.
    piped = sora2(
        "user",
        "create",
        "--email",
        "piped@example.com",
        "--nickname",
        "Piped",
        env=env_for(settings),
        stdin=PASSWORD + "\n",
    )
    assert piped.returncode == 0, piped.stderr
    again = sora2(
        "user",
        "create",
        "--email",
        "root@example.com",
        "--nickname",
        "Root",
        env=env_for(settings),
        stdin=PASSWORD + "\n",
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr
    piped_login, _, _ = await api.request(
        "POST", "/api/auth/login", json={"email": "piped@example.com", "password": PASSWORD}
    )
    assert piped_login == 200  # the password read from stdin, without its newline
    _, login, _ = await api.request(
        "POST", "/api/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    )
    admin = login["accessToken"]
    user_token, user = await api.register(email="plain@example.com")
    assert (await api.request("GET", "/api/admin/users", token=user_token))[0] == 403
    status, found, _ = await api.request("GET", "/api/admin/users?search=PLAIN", token=admin)
    assert status == 200
    assert [u["email"] for u in found["items"]] == ["plain@example.com"]
    user_id = user["user"]["id"]
    status, adjusted, _ = await api.request(
        "POST",
        f"/api/admin/users/{user_id}/credits",
        token=admin,
        json={"amount": -150, "reason": "test"},
    )
    assert status == 409
    assert adjusted["details"]["balance"] == 100
    status, adjusted, _ = await api.request(
        "POST",
        f"/api/admin/users/{user_id}/credits",
        token=admin,
        json={"amount": 25, "reason": "sorry"},
    )
    assert (status, adjusted["credits"]) == (200, 125)
    status, _, _ = await api.request(
        "PUT", f"/api/admin/users/{user_id}/status", token=admin, json={"status": "banned"}
    )
    assert status == 200
    status, body, _ = await api.request("GET", "/api/auth/me", token=user_token)
    assert status == 401  # banning ended the session
    status, body, _ = await api.request(
        "POST", "/api/auth/login", json={"email": "plain@example.com", "password": PASSWORD}
    )
    assert status == 403
    assert "suspended" in body["message"]


def _every_migration() -> list[str]:
    """Revision ids oldest first, from the migrations folder (helpers add theirs in parallel)."""
    from alembic.script import ScriptDirectory

    from sora2.api.db.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in script.walk_revisions()][::-1]


def test_db_check_and_upgrade_commands(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "DATA_DIR": str(tmp_path)}
    every = _every_migration()
    assert every[:2] == ["0001", "0002"]
    listed = ", ".join(every)
    check = sora2("db", "check", "--json", env=env)
    assert check.returncode == 1
    assert json.loads(check.stdout) == {
        "reachable": True,
        "upToDate": False,
        "pending": every,
        "message": f"{len(every)} pending migration(s): {listed}; run `sora2 db upgrade`",
        "fix": "sora2 db upgrade",
    }
    upgraded = sora2("db", "upgrade", env=env)
    assert upgraded.returncode == 0
    assert f"applied {len(every)} migration(s): {listed}" in upgraded.stdout
    assert sora2("db", "check", env=env).returncode == 0


def test_production_refuses_to_start_with_pending_migrations(tmp_path: Path) -> None:
    env = {
        "APP_ENV": "production",
        "JWT_SECRET": "p" * 48,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
        "DATA_DIR": str(tmp_path),
        "LOG_DIR": str(tmp_path / "logs"),
        "API_PORT": "1",  # never reached: it must stop before binding
    }
    for service in ("api", "worker"):
        result = sora2("serve", service, env=env)
        assert result.returncode == 1, result.stderr
        assert "pending migration" in result.stderr
        assert "sora2 db upgrade" in result.stderr


def test_db_commands_explain_an_unreachable_database(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DATA_DIR": str(tmp_path)}
    result = sora2("db", "check", env=env)
    assert result.returncode == 1
    assert "cannot use the database (postgresql at 127.0.0.1:1)" in result.stderr
    assert "Traceback" not in result.stderr
    as_json = json.loads(sora2("db", "check", "--json", env=env).stdout)
    assert as_json["reachable"] is False
    assert "postgresql at 127.0.0.1:1" in as_json["message"]


def test_the_fast_schema_check_agrees_with_alembic() -> None:
    from alembic.script import ScriptDirectory

    from sora2.api.db.migrate import alembic_config, head_revision

    assert [head_revision()] == ScriptDirectory.from_config(alembic_config()).get_heads()


async def test_a_worker_started_during_a_database_outage_waits_for_it_to_end(
    database_url: str, settings: Settings
) -> None:
    """Before, `sora2 serve worker` died at start when the database was unreachable; with
    workers restarted during an outage (the soak), none was left and every job stayed queued."""
    if not is_postgres(settings):
        pytest.skip("a SQLite file cannot become unreachable")
    target = urlsplit(database_url)
    relay = TcpRelay(target.port or 5432)
    await relay.start()
    through_relay = database_url.replace(f":{target.port}/", f":{relay.port}/")
    await relay.cut()
    database = Database(through_relay.replace("postgresql://", "postgresql+asyncpg://", 1))
    attempts = 0

    async def schema_check() -> None:
        nonlocal attempts
        attempts += 1
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        waiting = asyncio.create_task(until_database_answers(schema_check, first_wait=0.05))

        async def tried_twice() -> bool:
            return attempts >= 2  # refused, and tried again

        await wait_for(tried_twice, timeout=10)
        assert not waiting.done()
        await relay.restore()
        await asyncio.wait_for(waiting, timeout=10)
    finally:
        await database.dispose()
        await relay.cut()
