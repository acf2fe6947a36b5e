"""Property-based tests from our own `/openapi.json`: no 5xx and no response off its schema.

Bounded: deterministic generation, a few examples per operation (about 20 s), the Schemathesis
CLI against the running api over real HTTP, signed in as an admin with a completed video, so
paths with ids reach real data.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from sora2.api.db import Database
from sora2.api.users.models import User
from sora2.settings import Settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi
from tests.api.test_videos import create
from tests.api.test_worker import until_status, worker_running

pytestmark = pytest.mark.slow


async def make_admin(settings: Settings, user_id: str) -> None:
    """Admin routes are fuzzed too (as admin, so they get past the 403)."""
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            await session.execute(update(User).where(User.id == user_id).values(role="admin"))
            await session.commit()
    finally:
        await database.dispose()


CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


async def test_the_api_holds_its_openapi_contract(
    api: RunningApi, settings: Settings, provider: ScriptedProvider, tmp_path: Path
) -> None:
    token, body = await api.register()
    token_user_id = body["user"]["id"]
    _, video = await create(api, token)
    async with worker_running(settings, provider):
        await until_status(api, token, video["id"], "completed")
    await make_admin(settings, token_user_id)
    config = tmp_path / "schemathesis.toml"
    # Every {video_id} is our completed video, so content, ranges and cancel reach real data.
    config.write_text(f'[parameters]\n"path.video_id" = "{video["id"]}"\n')
    command = [
        str(Path(sys.executable).with_name("st")),
        f"--config-file={config}",
        "run",
        f"{api.url}/openapi.json",
        f"--checks={CHECKS}",
        "--max-examples=8",
        "--phases=examples,fuzzing",
        "--generation-deterministic",
        "--workers=2",
        "--request-timeout=10",
        # The rate-limited and session-ending routes would lock the fuzzer out of the rest.
        "--exclude-path-regex=/api/auth/(logout|register|login|refresh)|/api/users/password",
        "--exclude-method=DELETE",  # it would delete the one video the other routes need
        "-H",
        f"Authorization: Bearer {token}",
        "--no-color",
    ]
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
