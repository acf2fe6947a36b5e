"""The bench's backend must answer as an HTTP/1.1 server should, or no number built on it holds."""

from __future__ import annotations

import http.client
import re
import socket
import sys
from collections.abc import Iterator

import pytest
from bench._backend import SMALL_JSON
from bench._processes import Server, free_port


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    server = Server(
        "backend",
        [sys.executable, "-m", "bench._backend", "--port", str(port)],
        cpu=0,
        log_path=tmp_path_factory.mktemp("backend") / "backend.log",
    )
    server.start()
    try:
        server.wait_until(f"http://127.0.0.1:{port}/api/bench/small", SMALL_JSON)
        yield port
    finally:
        server.stop()


def test_serves_many_requests_on_one_kept_alive_connection(backend: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", backend, timeout=5)
    try:
        for _ in range(3):
            connection.request("GET", "/api/bench/small")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type") == "application/json"
            assert response.read() == SMALL_JSON
        connection.request("GET", "/api/health")
        assert connection.getresponse().read() == b'{"status":"ok"}'
    finally:
        connection.close()


def test_download_sends_exactly_the_bytes_asked_for(backend: int) -> None:
    size = 3 * 1024 * 1024 + 7
    connection = http.client.HTTPConnection("127.0.0.1", backend, timeout=10)
    try:
        connection.request("GET", f"/api/bench/download?bytes={size}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(size)
        assert len(response.read()) == size
        # The connection is still usable after a download.
        connection.request("GET", "/api/bench/small")
        assert connection.getresponse().read() == SMALL_JSON
    finally:
        connection.close()


def test_pipelined_requests_with_a_body_are_answered_in_order(backend: int) -> None:
    requests = (
        b"POST /api/bench/small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /api/nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /api/bench/small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", backend), timeout=5) as sock:
        sock.sendall(requests)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    # Responses follow each other with no separator: a body ends where the next status starts.
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"200", b"404", b"200"]
    assert received.endswith(SMALL_JSON)
