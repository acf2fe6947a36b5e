"""Files under `DATA_DIR/media`, addressed by keys such as `videos/<user>/<video>.mp4`.

Writers get a temporary path next to the final one and `commit` renames it into place, so a
reader never sees half a file and a crash leaves only a `*.part` file behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from typing import Protocol

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class Storage(Protocol):
    def path(self, key: str) -> Path: ...
    def temp_path(self, key: str) -> Path: ...
    def commit(self, temp: Path, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def discard(self, temp: Path) -> None: ...
    def exists(self, key: str) -> bool: ...


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        if not _SAFE_KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"unsafe storage key {key!r}")
        return self.root / key

    def temp_path(self, key: str) -> Path:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")

    def commit(self, temp: Path, key: str) -> int:
        """Moves a finished temporary file to `key`; returns its size in bytes."""
        final = self.path(key)
        size = temp.stat().st_size
        os.replace(temp, final)
        return size

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def discard(self, temp: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()
