"""A folder store answers its own stat() and small reads without obstore's threads; what it
says about a file is what obstore's LocalStore says, so validators (ETag, Last-Modified) a
client holds stay valid."""

from __future__ import annotations

from pathlib import Path

import obstore
from obstore.store import LocalStore

from sora2.api.storage import Storage


async def test_a_folder_file_is_described_as_obstore_describes_it(tmp_path: Path) -> None:
    storage = Storage.from_url(f"file://{tmp_path / 'media'}", scratch=tmp_path / "scratch")
    await storage.put_bytes("videos/a/thumb.jpg", b"\xff\xd8" + b"x" * 5000)
    ours = await storage.stat("videos/a/thumb.jpg")
    theirs = obstore.head(LocalStore(tmp_path / "media"), "videos/a/thumb.jpg")
    assert ours is not None
    assert (ours.size, ours.etag, ours.last_modified) == (
        theirs["size"],
        theirs["e_tag"],
        theirs["last_modified"],
    )
    assert await storage.stat("videos/a/missing.jpg") is None
    assert await storage.stat("videos/a") is None  # a folder is not an object


async def test_small_and_large_ranges_read_the_same_bytes(tmp_path: Path) -> None:
    storage = Storage.from_url(f"file://{tmp_path / 'media'}", scratch=tmp_path / "scratch")
    data = bytes(range(256)) * 4096  # 1 MiB: larger than one read
    await storage.put_bytes("videos/b/v.mp4", data)
    for start, end in ((0, 1024), (1000, 5000), (0, len(data)), (700_000, len(data))):
        chunks = [chunk async for chunk in await storage.open_range("videos/b/v.mp4", start, end)]
        assert b"".join(chunks) == data[start:end]
        at_once = storage.read_at_once("videos/b/v.mp4", start, end)
        assert at_once is None if end - start > 256 * 1024 else at_once == data[start:end]
