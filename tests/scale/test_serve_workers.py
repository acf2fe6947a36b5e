"""`sora2 serve api|web --workers 2`: two processes on one port; kill one, the port answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.fakes.servers import free_port

HEALTH = {"api": "/api/health/live", "web": "/healthz"}


def _environment(tmp_path: Path, port: int) -> dict[str, str]:
    return os.environ | {
        "APP_ENV": "test",
        "DATA_DIR": str(tmp_path),
        "LOG_DIR": str(tmp_path / "logs"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
        "JWT_SECRET": "w" * 48,
        "API_EMBEDDED_WORKER": "false",
        "API_PORT": str(port),
        "WEB_PORT": str(port),
        "API_URL": "http://127.0.0.1:1",
    }


def _until(condition_name: str, check: object, timeout: float = 30.0) -> object:
    """Polls `check()` until it returns something truthy; fails naming the condition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():  # type: ignore[operator]
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {condition_name}")


def _listeners(parent: psutil.Process, port: int) -> list[psutil.Process]:
    found = []
    for child in parent.children():
        try:
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in child.net_connections("tcp")
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _ask(port: int, path: str, processes: list[psutil.Process]) -> int | None:
    """One request on a fresh connection; returns the pid of the process that answered it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = connection.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        mine = connection.getsockname()[1]
        for process in processes:  # the server's end of this connection is in exactly one
            try:
                if any(c.raddr and c.raddr.port == mine for c in process.net_connections("tcp")):
                    return int(process.pid)
            except psutil.NoSuchProcess:
                continue
    return None


@pytest.fixture(params=["api", "web"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", request.param, "--workers", "2"],
        env=_environment(tmp_path, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield request.param, port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert process.returncode == 0, errors  # SIGTERM stops every copy gracefully


def test_two_processes_share_the_port_and_survive_one_being_killed(
    served: tuple[str, int, int],
) -> None:
    service, port, pid = served
    parent = psutil.Process(pid)
    _until("two listening processes", lambda: len(_listeners(parent, port)) == 2)
    copies = _listeners(parent, port)
    path = HEALTH[service]
    _until(
        "both processes to answer",
        lambda: _answerers(port, path, copies) == {copy.pid for copy in copies},
    )

    victim, survivor = copies
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    # Every fresh connection right after the kill is answered (by the survivor, or by the copy
    # the parent starts in the victim's place): none is refused or reset.
    answered_by = {_ask(port, path, [survivor, *parent.children()]) for _ in range(40)}
    assert survivor.pid in answered_by
    assert victim.pid not in answered_by
    _until("the parent to replace the killed process", lambda: len(_listeners(parent, port)) == 2)


def _answerers(port: int, path: str, copies: list[psutil.Process]) -> set[int | None]:
    return {_ask(port, path, copies) for _ in range(20)}


def test_the_copies_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sora2", "serve", "web", "--workers", "2"],
        env=_environment(tmp_path, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(process.pid)
    _until("two listening processes", lambda: len(_listeners(parent, port)) == 2)
    copies = _listeners(parent, port)
    process.kill()
    process.wait(10)
    _, alive = psutil.wait_procs(copies, timeout=20)
    assert alive == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
