"""Every path the proxy bench measures really forwards to its backend, and ours runs as deployed.

A bench that timed error pages, or our proxy without its production features, would report
numbers about nothing: these checks run each server once, without load.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench._backend import SMALL_JSON
from bench._processes import Server, free_port
from bench.proxy_bench import (
    CHILD_PYTHON_ENV,
    bare_server,
    fastapi_server,
    nginx_server,
    proxy_base_url,
    sora2_server,
)

DOWNLOAD_BYTES = 3 * 1024 * 1024 + 5


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    backend = Server(
        "backend",
        [sys.executable, "-m", "bench._backend", "--port", str(port)],
        cpu=0,
        log_path=tmp_path_factory.mktemp("backend") / "backend.log",
        env=CHILD_PYTHON_ENV,
    )
    backend.start()
    try:
        backend.wait_until(f"http://127.0.0.1:{port}/api/health", None)
        yield f"http://127.0.0.1:{port}"
    finally:
        backend.stop()


@pytest.mark.parametrize(
    "builder",
    [
        pytest.param(builder, id=builder.__name__)
        for builder in (sora2_server, nginx_server, fastapi_server, bare_server)
    ],
)
def test_path_forwards_small_json_and_a_download(
    builder: Callable[[Path, int, str], Server],
    backend_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if builder is nginx_server:
        request.getfixturevalue("nginx_executable")  # installed with apt when missing
    port = free_port()
    server = builder(tmp_path, port, backend_url)
    server.start()
    try:
        base = proxy_base_url(port)
        server.wait_until(f"{base}bench/small", SMALL_JSON)
        with urllib.request.urlopen(f"{base}bench/download?bytes={DOWNLOAD_BYTES}") as response:
            assert response.status == 200
            assert len(response.read()) == DOWNLOAD_BYTES
    finally:
        server.stop()


def test_our_proxy_runs_with_its_production_features(backend_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = sora2_server(tmp_path, port, backend_url)
    assert server.env["APP_ENV"] == "production"
    server.start()
    try:
        server.wait_until(f"{proxy_base_url(port)}bench/small", SMALL_JSON)
        with urllib.request.urlopen(f"{proxy_base_url(port)}bench/small") as response:
            request_id = response.headers["X-Request-ID"]
        assert request_id
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            metrics = response.read().decode()
        assert 'sora2_proxy_requests_total{status_class="2xx"}' in metrics
    finally:
        server.stop()
    # One access line per proxied request, in the log file, as in production (flushed at exit).
    access_log = (tmp_path / "logs" / "web.log").read_text()
    assert request_id in access_log
    assert "/bench/small" in access_log
