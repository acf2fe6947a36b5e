"""One console for the whole stack: every line prefixed with its aligned, coloured source.

Each source also has a transcript, `LOG_DIR/dev/<source>.log`: the same lines without colour,
appended, with a marker at every start, rotated by size. The services' own log files
(`LOG_DIR/<service>.log`, written by `sora2.logs`) stay as they are; the transcript adds what a
service prints before its logging is set up (import errors, tracebacks) and what the launcher
says about it (starts, crashes, restarts).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sora2.logs import shift_backups

TRANSCRIPT_MAX_BYTES = 10 * 1024 * 1024
TRANSCRIPT_BACKUPS = 3

LAUNCHER = "dev"
_COLOURS = {"api": "36", "web": "35", LAUNCHER: "1"}  # cyan, magenta, bold
_RESET = "\x1b[0m"


def wants_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


class Transcript:
    """Appends lines to a file; shifts it to `.1` … `.<backups>` when it would pass `max_bytes`."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = TRANSCRIPT_MAX_BYTES,
        backups: int = TRANSCRIPT_BACKUPS,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self._size = self._file.tell()

    def write(self, line: str) -> None:
        text = line + "\n"
        size = len(text.encode("utf-8", "replace"))
        if self._size and self._size + size > self.max_bytes:
            self._rotate()
        self._file.write(text)
        self._file.flush()
        self._size += size

    def close(self) -> None:
        self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        shift_backups(self.path, self.backups)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0


class Console:
    """Writes prefixed lines for several sources to one stream and to one transcript per source."""

    def __init__(
        self,
        sources: Iterable[str],
        *,
        log_dir: Path,
        stream: TextIO | None = None,
        colour: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.colour = wants_colour(self.stream) if colour is None else colour
        names = list(dict.fromkeys([LAUNCHER, *sources]))
        self.width = max(len(name) for name in names)
        self.log_dir = log_dir
        self._transcripts = {name: Transcript(log_dir / f"{name}.log") for name in names}

    def transcript_path(self, source: str) -> Path:
        return self._transcripts[source].path

    def mark_start(self, description: str) -> None:
        """Writes a start marker into every transcript, so each run is easy to find."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for transcript in self._transcripts.values():
            transcript.write(f"===== {stamp} {description} =====")

    def line(self, source: str, text: str) -> None:
        """A line a service printed: to the console with its prefix, and to its transcript."""
        text = text.rstrip("\r\n")
        self._transcripts[source].write(text)
        self._emit(source, text)

    def say(self, text: str, *, about: str | None = None) -> None:
        """A line from the launcher, also recorded in the transcript of the service it is about."""
        for part in text.splitlines() or [""]:
            self._transcripts[LAUNCHER].write(part)
            if about is not None and about != LAUNCHER:
                self._transcripts[about].write(f"[sora2 dev] {part}")
            self._emit(LAUNCHER, part)

    def close(self) -> None:
        for transcript in self._transcripts.values():
            transcript.close()

    def _emit(self, source: str, text: str) -> None:
        label = source.ljust(self.width)
        if self.colour:
            label = f"\x1b[{_COLOURS.get(source, '33')}m{label}{_RESET}"
        try:
            self.stream.write(f"{label} | {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not bring the stack down; the transcript has the line
