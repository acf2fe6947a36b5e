"""A real `sora2 dev` (or `sora2 doctor`) in a scratch checkout folder, on free ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fakes.servers import free_port

# Variables of the developer's own shell that would steer the stack away from the test's set-up.
_SCRUBBED = (
    "APP_ENV",
    "NODE_ENV",
    "API_HOST",
    "API_PORT",
    "PORT",
    "WEB_HOST",
    "WEB_PORT",
    "API_URL",
    "API_URLS",
    "NEXT_PUBLIC_API_URL",
    "FRONTEND_URL",
    "DATABASE_URL",
    "DATA_DIR",
    "LOG_DIR",
    "VIDEO_PROVIDER",
    "OPENAI_API_KEYS",
    "OPENAI_API_KEY",
    "FORCE_COLOR",
)

READY = "all ready in"


def scratch_environment(folder: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _SCRUBBED}
    env.update(
        DATA_DIR=str(folder / "data"),
        LOG_DIR=str(folder / "logs"),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A plain GET (no proxies from the environment): status and body, whatever the status."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def wait_until(condition: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def is_gone(process: psutil.Process) -> bool:
    """True once the process has ended (its PID may be reused: psutil checks the create time)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class DevStack:
    """`python -m sora2 dev …` as a user runs it, with its output collected line by line."""

    def __init__(
        self,
        folder: Path,
        *args: str,
        api_port: int | None = None,
        web_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.api_port = api_port or free_port()
        self.web_port = web_port or free_port()
        environment = scratch_environment(
            folder, API_PORT=str(self.api_port), WEB_PORT=str(self.web_port), **(env or {})
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.spawned_at = time.monotonic()
        self.ready_seen_after: float | None = None  # seconds from spawn to the ready line
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sora2", "dev", *args],
            cwd=folder,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.started: dict[int, psutil.Process] = {}
        self.watch_root: Path | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if READY in line and self.ready_seen_after is None:
                self.ready_seen_after = time.monotonic() - self.spawned_at
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, *, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """The first output line (from index `after`) matching `pattern`; fails after `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s; output:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(timeout=min(remaining, 0.2))

    def wait_ready(self, timeout: float = 45.0) -> None:
        self.wait_for(READY, timeout=timeout)
        self.remember_pids()

    def run_file(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.folder / "data" / "devstack.json").read_text())
        return document

    def service_pid(self, name: str) -> int | None:
        for run in self.run_file()["runs"]:
            if run["launcher"]["pid"] != self.process.pid:
                continue
            for service in run["services"]:
                if service["name"] == name:
                    return int(service["process"]["pid"])
        return None

    def remember_pids(self) -> None:
        """Every process `sora2 dev` started so far (services and anything they started)."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            self.started.setdefault(child.pid, child)

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as a terminal delivers it to the launcher, then its exit status."""
        self.remember_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def leftovers(self) -> list[psutil.Process]:
        return [process for process in self.started.values() if not is_gone(process)]

    def close(self) -> None:
        """Whatever a test left running is stopped; nothing it started may survive."""
        if self.process.poll() is None:
            self.interrupt()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        for process in self.leftovers():  # only processes this test's launcher started
            process.kill()


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[DevStack]]:
    """Collects the stacks a test starts and stops them all at its end."""
    started: list[DevStack] = []
    yield started
    for stack in started:
        stack.close()


@pytest.fixture
def start_stack(stacks: list[DevStack], tmp_path: Path) -> Any:
    def start(*args: str, folder: Path | None = None, **kwargs: Any) -> DevStack:
        stack = DevStack(folder or tmp_path, *args, **kwargs)
        stacks.append(stack)
        return stack

    return start


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """One healthy stack for the tests that only look at it (or disturb it and wait for recovery).

    Starting a stack costs seconds on a busy machine; tests that end or break a stack start
    their own. It reloads on changes under its own scratch `src/` (`watch_root`).
    """
    folder = tmp_path_factory.mktemp("shared-stack")
    watch_root = folder / "src"
    (watch_root / "api").mkdir(parents=True)
    (watch_root / "web").mkdir()
    stack = DevStack(folder, "--watch-root", str(watch_root))
    stack.watch_root = watch_root
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.close()


class Listener:
    """A foreign process's listening socket: the test itself holds the port."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])

    def still_accepts(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            pass
        self.sock.settimeout(2)
        connection, _ = self.sock.accept()
        connection.close()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    opened: list[Listener] = []
    yield opened
    for listener in opened:
        listener.close()
