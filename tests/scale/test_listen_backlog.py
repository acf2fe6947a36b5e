"""A burst of thousands of connections (every viewer's page reconnecting after a deploy) waits in
the kernel's accept queue instead of having its SYNs dropped (each drop costs a client a second or
more): the servers listen with `LISTEN_BACKLOG`, capped by the kernel at net.core.somaxconn."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sora2.api.server import uvicorn_config
from sora2.serving import LISTEN_BACKLOG, reuse_port_socket
from sora2.settings import load_settings

BURST = 3_000  # above the 2,048 the servers used to ask for


def _somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 0


@pytest.fixture
def enough_open_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < BURST + 256:
        pytest.skip(f"open-file hard limit {hard} is below {BURST + 256}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_api_asks_uvicorn_for_the_large_backlog(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert uvicorn_config(load_settings(), object()).backlog == LISTEN_BACKLOG


@pytest.mark.skipif(_somaxconn() < BURST, reason="net.core.somaxconn caps the backlog lower")
def test_a_burst_of_connections_waits_in_the_accept_queue(enough_open_files: None) -> None:
    listener = reuse_port_socket("127.0.0.1", 0)
    address = listener.getsockname()
    clients: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    try:
        for _ in range(BURST):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(address)
            clients.append(client)
            selector.register(client, selectors.EVENT_WRITE)
        # Nobody accepts: every connection must still complete its handshake (a dropped SYN
        # is only retried after a second, then three).
        connected = 0
        deadline = time.monotonic() + 5.0
        while connected < BURST and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                selector.unregister(key.fileobj)
                done = key.fileobj
                assert isinstance(done, socket.socket)
                assert done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                connected += 1
        assert connected == BURST
    finally:
        selector.close()
        for client in clients:
            client.close()
        listener.close()
