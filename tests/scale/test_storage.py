"""The one storage interface, on a folder and on a real S3 wire server (moto) alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sora2.api.storage import Storage, StorageUnavailable
from sora2.api.storage.objects import UPLOAD_PART_BYTES
from tests.fakes.s3 import S3Server


@pytest.fixture(params=["file", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    if request.param == "file":
        return Storage.from_url((tmp_path / "store").as_uri(), scratch=tmp_path / "scratch")
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    bucket = server.new_bucket()
    return Storage.from_url(f"s3://{bucket}/media", scratch=tmp_path / "scratch")


async def _read(storage: Storage, key: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in await storage.open_range(key, start, end)])


async def test_a_committed_file_is_stored_whole_and_its_scratch_copy_is_gone(
    storage: Storage,
) -> None:
    temp = storage.temp_path("videos/u1/v1.mp4")
    temp.write_bytes(b"0123456789" * 100)
    assert await storage.commit(temp, "videos/u1/v1.mp4") == 1000
    assert not temp.exists()
    stored = await storage.stat("videos/u1/v1.mp4")
    assert stored is not None
    assert stored.size == 1000
    assert await _read(storage, "videos/u1/v1.mp4", 10, 20) == b"0123456789"
    assert await _read(storage, "videos/u1/v1.mp4", 995, 1000) == b"56789"
    assert [key async for key, _ in storage.objects()] == ["videos/u1/v1.mp4"]


async def test_a_large_file_goes_up_in_parts_and_reads_back_exactly(storage: Storage) -> None:
    size = 2 * UPLOAD_PART_BYTES + 12_345
    content = os.urandom(size)
    temp = storage.temp_path("videos/u1/big.mp4")
    temp.write_bytes(content)
    assert await storage.commit(temp, "videos/u1/big.mp4") == size
    middle = UPLOAD_PART_BYTES - 10
    assert (
        await _read(storage, "videos/u1/big.mp4", middle, middle + 20)
        == content[middle : middle + 20]
    )
    assert await _read(storage, "videos/u1/big.mp4", 0, size) == content
    stored = await storage.stat("videos/u1/big.mp4")
    assert stored is not None
    if not storage.is_local:  # S3 names a multipart object's ETag by its part count
        assert stored.etag is not None
        assert stored.etag.strip('"').endswith("-3")


async def test_delete_removes_and_tolerates_what_is_already_gone(storage: Storage) -> None:
    await storage.put_bytes("thumbnails/u1/v1.jpg", b"jpeg")
    assert await storage.read_bytes("thumbnails/u1/v1.jpg") == b"jpeg"
    await storage.delete("thumbnails/u1/v1.jpg")
    assert await storage.stat("thumbnails/u1/v1.jpg") is None
    await storage.delete("thumbnails/u1/v1.jpg")
    assert not await storage.exists("thumbnails/u1/v1.jpg")


async def test_the_probe_writes_reads_and_cleans_up(storage: Storage) -> None:
    await storage.probe()
    assert [key async for key, _ in storage.objects()] == []


@pytest.mark.parametrize("key", ["../etc/passwd", "videos/../../x", "/abs", "a//b", ""])
def test_unsafe_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe storage key"):
        storage.temp_path(key)


async def test_a_missing_bucket_is_reported_naming_the_store(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    storage = Storage.from_url("s3://no-such-bucket-here", scratch=tmp_path)
    with pytest.raises(StorageUnavailable, match="s3://no-such-bucket-here"):
        await storage.probe()


async def test_an_unreachable_endpoint_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_RETRIES", "0")
    storage = Storage.from_url("s3://bucket-x", scratch=tmp_path)
    with pytest.raises(StorageUnavailable, match="s3://bucket-x failed to store"):
        await storage.probe()
