"""The servers under test as child processes: start pinned, wait for answers, measure, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of one GET; HTTP errors are answers too, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


@dataclass
class Server:
    """One server process under test, started on `cpu` with its output kept in a log file."""

    name: str
    command: Sequence[str]
    cpu: int
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(self.cpu), *self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def wait_until(
        self, url: str, expected_body: bytes | None, timeout: float = READY_TIMEOUT_S
    ) -> None:
        """Poll `url` until it answers 200 (with `expected_body` if given), or fail with the log."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                status, body = http_get(url, timeout=2.0)
                if status == 200 and expected_body in (None, body):
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as error:
                last = str(error)
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} never answered {url} correctly ({last}). Log:\n{tail}")

    def pin(self, cpu: int) -> None:
        """Move every thread of the process to `cpu` (taskset at start only pins new threads)."""
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})
        self.cpu = cpu

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def reset_peak_rss(self) -> int:
        """Reset the kernel's peak-RSS mark to the current RSS and return that RSS in bytes."""
        # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0).
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self._status_kib("VmRSS") * 1024

    def peak_rss(self) -> int:
        return self._status_kib("VmHWM") * 1024

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{self.pid}/status has no {key}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
