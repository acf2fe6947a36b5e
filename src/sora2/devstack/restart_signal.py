"""The launcher tells the web that it is restarting the api on purpose.

A file whose content is the wall-clock time (seconds since the epoch) until which the restart
may last; it exists only while one is under way. `sora2 dev` names it to the web in
`SORA2_API_RESTART_SIGNAL`; the web's proxy reads it only when the api refuses a connection, and
then holds the request until the new api answers instead of failing it. When the file is absent
(or its time has passed), a refused connection is a real outage and fails fast as ever.

A file rather than a socket or an endpoint: nothing to listen on or guard, it survives either
side restarting, and the two processes are on one machine by construction.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

ENV_NAME = "SORA2_API_RESTART_SIGNAL"


class RestartSignal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def announce(self, expected_seconds: float) -> None:
        """A restart begins; it should be over within `expected_seconds`."""
        # Written whole then renamed: the web never reads half a number.
        partial = self.path.with_suffix(".partial")
        partial.write_text(f"{time.time() + expected_seconds:.3f}\n")
        os.replace(partial, self.path)

    def clear(self) -> None:
        """The restart is over (the new process answers, or it failed: then it is an outage)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
