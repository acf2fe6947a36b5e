"""Videos, thumbnails and reference images in one object store, chosen by `STORAGE_URL`.

`file:///abs/folder` keeps them in a folder; `s3://bucket/prefix` in any S3-compatible store
(AWS, MinIO, Ceph, R2...), configured by the standard `AWS_*` variables. Both go through obstore
(Rust's `object_store`): one API with streaming, ranged reads and multipart uploads; see
docs/deployment.md for why it was chosen over aioboto3, with figures.

Writers produce a local file first (a provider downloads into `temp_path`), then `commit` uploads
it streaming: a reader never sees half an object, and memory stays flat whatever the file's size.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import re
import stat as stat_module
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import obstore
from obstore.store import LocalStore, S3Store

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from typing_extensions import Buffer

logger = logging.getLogger("sora2.storage")

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
# Multipart parts of 8 MiB, 4 in flight: ~32 MiB of buffers at most per upload, whatever the size.
UPLOAD_PART_BYTES = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 4
READ_CHUNK_BYTES = 256 * 1024
PROBE_KEY = "sora2-probe/writable"


# obstore (0.12) completes Python futures from its own runtime threads. A thread still inside
# that hand-over when the interpreter finalizes is ended by CPython with pthread_exit, which
# aborts through Rust frames (SIGABRT, exit 134) in about half of all runs of a short command.
# Waiting briefly at exit, before finalization starts, lets such threads leave Python first.
EXIT_SETTLE_SECONDS = 0.1


@functools.cache
def _settle_runtime_threads_at_exit() -> None:
    atexit.register(time.sleep, EXIT_SETTLE_SECONDS)


class StorageUnavailable(Exception):
    """The store could not be reached or refused the operation; the message says which store."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    etag: str | None
    last_modified: datetime


def check_key(key: str) -> str:
    if not _SAFE_KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"unsafe storage key {key!r}")
    return key


def _s3_store(url: str) -> S3Store:
    parts = urlsplit(url)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    return S3Store(
        parts.netloc,
        prefix=parts.path.strip("/") or None,
        client_options={
            # Plain http is for a store on the same host or network (MinIO, moto): when asked.
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=5),
            # A whole request may last as long as a slow viewer takes to watch; a stall may not.
            "timeout": timedelta(hours=2),
            "read_timeout": timedelta(seconds=30),
        },
        # A few quick retries, not object_store's 10 over 3 minutes: a reader is waiting.
        retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=20)},
    )


class Storage:
    def __init__(self, store: ObjectStore, *, url: str, scratch: Path, root: Path | None) -> None:
        _settle_runtime_threads_at_exit()
        self._store = store
        self.url = url
        self._scratch = scratch
        self._root = root  # the folder of a file:// store: committing there is a rename

    @classmethod
    def from_url(cls, url: str, *, scratch: Path) -> Storage:
        """`file:///abs/folder` or `s3://bucket[/prefix]`; `scratch` holds files being written."""
        parts = urlsplit(url)
        if parts.scheme == "file":
            root = Path(unquote(parts.path))
            root.mkdir(parents=True, exist_ok=True)
            return cls(LocalStore(root), url=url, scratch=scratch, root=root)
        if parts.scheme == "s3":
            return cls(_s3_store(url), url=url, scratch=scratch, root=None)
        raise ValueError(f"unsupported storage URL {url!r}: use file:///folder or s3://bucket")

    @property
    def is_local(self) -> bool:
        return self._root is not None

    def _failed(self, doing: str, error: Exception) -> StorageUnavailable:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return StorageUnavailable(
            f"storage {self.url} failed to {doing}: {type(error).__name__} {first_line[:200]}"
        )

    # --- writing ---------------------------------------------------------------------------

    def temp_path(self, key: str) -> Path:
        """A fresh local file to write `key`'s content into before `commit`."""
        name = check_key(key).rsplit("/", 1)[-1]
        self._scratch.mkdir(parents=True, exist_ok=True)
        return self._scratch / f".{uuid.uuid4().hex}.{name}.part"

    async def commit(self, temp: Path, key: str) -> int:
        """Stores the finished file `temp` under `key` (then removes `temp`); returns its size."""
        size, renamed = self._rename_into_folder(temp, check_key(key))
        if renamed:
            return size
        try:
            await obstore.put_async(
                self._store,
                key,
                temp,
                use_multipart=size > UPLOAD_PART_BYTES,
                chunk_size=UPLOAD_PART_BYTES,
                max_concurrency=UPLOAD_CONCURRENCY,
            )
        except Exception as error:
            raise self._failed(f"store {key}", error) from error
        self.discard(temp)
        return size

    def _rename_into_folder(self, temp: Path, key: str) -> tuple[int, bool]:
        """(size, True) when `temp` could simply be moved into a folder store (same disk)."""
        size = temp.stat().st_size
        if self._root is None or not _same_device(temp, self._root):
            return size, False
        final = self._root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        return size, True

    def discard(self, temp: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()

    async def put_bytes(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._store, check_key(key), data)
        except Exception as error:
            raise self._failed(f"store {key}", error) from error

    # --- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> StoredObject | None:
        """Size and version of `key`, or None when there is no such object."""
        if self._root is not None:
            return self._stat_in_folder(self._root, key)
        try:
            meta = await obstore.head_async(self._store, check_key(key))
        except FileNotFoundError:
            return None
        except Exception as error:
            raise self._failed(f"look up {key}", error) from error
        return StoredObject(meta["size"], meta["e_tag"], meta["last_modified"])

    def _stat_in_folder(self, root: Path, key: str) -> StoredObject | None:
        """A folder's file, with one stat() on the event loop instead of a hop to obstore's
        threads (a stat of a local file takes microseconds); the version is what obstore's
        LocalStore would say (the same ETag formula), so a client's `If-Range` still holds."""
        try:
            found = os.stat(root / check_key(key))
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._failed(f"look up {key}", error) from error
        if not stat_module.S_ISREG(found.st_mode):
            return None
        micros = found.st_mtime_ns // 1000
        return StoredObject(
            found.st_size,
            f'"{found.st_ino:x}-{micros:x}-{found.st_size:x}"',
            _EPOCH + timedelta(microseconds=micros),
        )

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def read_bytes(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, check_key(key))
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise
        except Exception as error:
            raise self._failed(f"read {key}", error) from error

    async def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (exclusive) of `key`, in chunks, never all in memory. The
        request is made before this returns, so a store that is down is an error here, while an
        answer can still say so, rather than a body cut short."""
        if end <= start:
            return _nothing()
        try:
            result = await obstore.get_async(
                self._store, check_key(key), options={"range": (start, end)}
            )
        except FileNotFoundError:
            raise
        except Exception as error:
            raise self._failed(f"read {key}", error) from error
        return self._chunks(key, result.stream(min_chunk_size=READ_CHUNK_BYTES))

    def read_at_once(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes `start` to `end` of `key` when the store is a folder and the range is at most
        one chunk (a thumbnail, a player's probe): read on the event loop, which costs less
        than the hops to read it elsewhere. None otherwise: stream it with `open_range`."""
        if self._root is None or end - start > READ_CHUNK_BYTES:
            return None
        try:
            with open(self._root / check_key(key), "rb") as file:
                file.seek(start)
                return file.read(end - start)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise self._failed(f"read {key}", error) from error

    async def _chunks(self, key: str, stream: AsyncIterator[Buffer]) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield bytes(chunk)
        except Exception as error:
            raise self._failed(f"read {key}", error) from error

    async def objects(self) -> AsyncIterator[tuple[str, int]]:
        """Every stored object: (key, size), in the store's order."""
        try:
            async for batch in obstore.list(self._store, chunk_size=500):
                for meta in batch:
                    if not meta["path"].startswith(PROBE_KEY.split("/")[0]):
                        yield meta["path"], meta["size"]
        except Exception as error:
            raise self._failed("list objects", error) from error

    # --- removing and checking -------------------------------------------------------------

    async def delete(self, key: str) -> None:
        """Removes `key`; an object that is already gone is not an error."""
        try:
            await obstore.delete_async(self._store, check_key(key))
        except FileNotFoundError:
            return
        except Exception as error:
            raise self._failed(f"delete {key}", error) from error

    async def forget(self, keys: list[str]) -> None:
        """Deletes what nothing refers to any more; a failure is logged, not raised (the record
        is already gone, so the caller's answer must not change)."""
        for key in keys:
            try:
                await self.delete(key)
            except StorageUnavailable as error:
                logger.warning("left an orphan object behind: %s", error)

    async def probe(self) -> None:
        """Writes, reads back and deletes a small object: raises `StorageUnavailable` if any
        step fails (`sora2 doctor`)."""
        payload = uuid.uuid4().bytes
        await self.put_bytes(PROBE_KEY, payload)
        if await self.read_bytes(PROBE_KEY) != payload:
            raise StorageUnavailable(f"storage {self.url} returned other bytes than were written")
        await self.delete(PROBE_KEY)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _same_device(file: Path, folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return file.stat().st_dev == folder.stat().st_dev
    return False


async def copy_object(source: Storage, target: Storage, key: str) -> int:
    """Streams one object from `source` to `target` (multipart for large ones); returns bytes."""
    try:
        result = await obstore.get_async(source._store, check_key(key))
        size = result.meta["size"]
        await obstore.put_async(
            target._store,
            key,
            result.stream(min_chunk_size=UPLOAD_PART_BYTES),
            use_multipart=size > UPLOAD_PART_BYTES,
            chunk_size=UPLOAD_PART_BYTES,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
    except FileNotFoundError:
        raise
    except Exception as error:
        raise StorageUnavailable(
            f"copying {key} from {source.url} to {target.url} failed: {type(error).__name__}"
        ) from error
    return int(size)
