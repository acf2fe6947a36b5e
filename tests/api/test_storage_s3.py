"""Videos kept in S3 (`STORAGE_URL=s3://…`, a real S3 wire server on loopback): the worker
uploads, `/content` serves ranges from the bucket, delete removes the objects; no local copies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sora2.settings import Settings
from tests.api.conftest import empty_tables, make_settings
from tests.api.fake_provider import FAKE_JPEG, FAKE_MP4, ScriptedProvider
from tests.api.harness import RunningApi, running_api
from tests.api.test_videos import create
from tests.api.test_worker import until_status, worker_running
from tests.fakes.s3 import S3Server


@pytest.fixture
async def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.new_bucket()


@pytest.fixture
async def s3_settings(database_url: str, tmp_path: Path, bucket: str) -> Settings:
    made = make_settings(database_url, tmp_path, storage_url=f"s3://{bucket}/media")
    await empty_tables(made.resolved_database_url)
    return made


@pytest.fixture
async def s3_api(s3_settings: Settings, provider: ScriptedProvider) -> AsyncIterator[RunningApi]:
    async with running_api(s3_settings, provider) as running:
        yield running


def _local_files(settings: Settings) -> list[Path]:
    return [path for path in settings.data_dir.rglob("*") if path.suffix in {".mp4", ".jpg"}]


async def test_results_live_in_the_bucket_and_are_served_from_it(
    s3_api: RunningApi,
    s3_settings: Settings,
    provider: ScriptedProvider,
    s3_server: S3Server,
    bucket: str,
) -> None:
    token, _ = await s3_api.register()
    _, video = await create(s3_api, token)
    async with worker_running(s3_settings, provider):
        done = await until_status(s3_api, token, video["id"], "completed")

    objects = s3_server.keys(bucket)
    assert sorted(objects.values()) == sorted([len(FAKE_MP4), len(FAKE_JPEG)])
    assert all(key.startswith("media/") for key in objects)
    assert _local_files(s3_settings) == []  # nothing left behind on the worker's disk

    status, whole, response = await s3_api.request("GET", done["contentUrl"], token=token)
    assert (status, whole) == (200, FAKE_MP4)
    assert response.headers["Accept-Ranges"] == "bytes"
    etag = response.headers["ETag"]
    status, part, response = await s3_api.request(
        "GET", done["contentUrl"], token=token, headers={"Range": "bytes=100-199"}
    )
    assert (status, part) == (206, FAKE_MP4[100:200])
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(FAKE_MP4)}"
    status, part, _ = await s3_api.request(
        "GET",
        done["contentUrl"],
        token=token,
        headers={"Range": "bytes=0-9", "If-Range": etag},
    )
    assert (status, part) == (206, FAKE_MP4[:10])
    status, thumb, _ = await s3_api.request("GET", done["thumbnailUrl"], token=token)
    assert (status, thumb) == (200, FAKE_JPEG)

    assert (await s3_api.request("DELETE", f"/api/videos/{video['id']}", token=token))[0] == 204
    assert s3_server.keys(bucket) == {}


async def test_a_range_for_another_version_gets_the_whole_file(
    s3_api: RunningApi, s3_settings: Settings, provider: ScriptedProvider
) -> None:
    token, _ = await s3_api.register()
    _, video = await create(s3_api, token)
    async with worker_running(s3_settings, provider):
        done = await until_status(s3_api, token, video["id"], "completed")
    status, body, response = await s3_api.request(
        "GET",
        done["contentUrl"],
        token=token,
        headers={"Range": "bytes=0-9", "If-Range": '"an-old-version"'},
    )
    assert (status, body) == (200, FAKE_MP4)
    assert "Content-Range" not in response.headers


async def test_a_store_that_is_down_is_a_503_with_retry_after(
    s3_api: RunningApi,
    s3_settings: Settings,
    provider: ScriptedProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token, _ = await s3_api.register()
    _, video = await create(s3_api, token)
    async with worker_running(s3_settings, provider):
        done = await until_status(s3_api, token, video["id"], "completed")
    # The same bucket behind an address where nothing listens: the api must say so, not 500.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    async with running_api(s3_settings, provider) as cut_off:
        status, body, response = await cut_off.request("GET", done["contentUrl"], token=token)
    assert status == 503, body
    assert body["error"] == "Storage Unavailable"
    assert response.headers["Retry-After"]
