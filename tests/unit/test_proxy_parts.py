"""The proxy's small parts on their own: circuit, backoff, Retry-After, budget, headers, paths,
its log lines."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import pytest

from sora2.logs import LOG_FORMAT, _OnceFormatter
from sora2.proxy import CircuitBreaker, CircuitState
from sora2.proxy._headers import rewrite_cookie_path, rewrite_location
from sora2.proxy._paths import UnsafePath, checked_upstream_path
from sora2.proxy._retry import RetryBudget, backoff_delay, is_idempotent, parse_retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = FakeClock()
    circuit = CircuitBreaker(failure_threshold=3, open_time=0.5, clock=clock)
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()  # not consecutive: still closed
    for _ in range(3):
        circuit.record_failure()
    assert circuit.state is CircuitState.OPEN
    assert not circuit.allow()
    assert circuit.retry_after() == pytest.approx(0.5)
    clock.now += 0.5
    assert circuit.allow()  # the one half-open probe
    assert circuit.state.name == "HALF_OPEN"
    assert not circuit.allow()
    circuit.record_failure()
    assert circuit.state is CircuitState.OPEN
    clock.now += 0.5
    assert circuit.allow()
    circuit.record_success()
    assert circuit.state.name == "CLOSED"
    assert circuit.allow()


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    for attempt in (1, 2, 3, 4):
        delays = [backoff_delay(attempt, 0.1) for _ in range(200)]
        assert all(0 <= delay <= 0.1 * 2 ** (attempt - 1) for delay in delays)
        assert max(delays) > 0.1 * 2 ** (attempt - 1) * 0.5


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Sat, 28 Nov 2026 12:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_idempotency() -> None:
    assert is_idempotent("GET", False)
    assert is_idempotent("DELETE", False)
    assert not is_idempotent("POST", False)
    assert not is_idempotent("PATCH", False)
    assert is_idempotent("POST", True)


def test_retry_budget_is_a_share_of_requests_in_flight_with_a_floor() -> None:
    budget = RetryBudget(ratio=0.2, minimum=3)
    budget.in_flight = 10
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    budget.in_flight = 50
    assert [budget.try_acquire() for _ in range(8)] == [True] * 7 + [False]
    budget.release()
    assert budget.try_acquire()


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("a=1; Path=/api", "a=1; Path=/api/proxy"),
        ("a=1; path=/api/auth; HttpOnly", "a=1; path=/api/proxy/auth; HttpOnly"),
        ("a=1; Path = /api/", "a=1; Path = /api/proxy/"),
        ("a=1; Path=/apiary", "a=1; Path=/apiary"),
        ("a=1; PATH=/api/x", "a=1; PATH=/api/proxy/x"),
        ("a=1; Path=/API/x", "a=1; Path=/API/x"),  # paths are case-sensitive
        ("a=1; Path=/", "a=1; Path=/"),
        ("a=1", "a=1"),
    ],
)
def test_cookie_paths(cookie: str, expected: str) -> None:
    assert rewrite_cookie_path(cookie, "/api", "/api/proxy") == expected


def test_cookie_paths_follow_the_configured_prefixes() -> None:
    assert rewrite_cookie_path("a=1; Path=/v2/x", "/v2", "/backend") == "a=1; Path=/backend/x"
    assert rewrite_cookie_path("a=1; Path=/api/x", "/v2", "/backend") == "a=1; Path=/api/x"


def test_locations_into_the_api_are_rewritten() -> None:
    def rewrite(location: str) -> str:
        return rewrite_location(
            location,
            api_url="http://127.0.0.1:3101",
            upstream_prefix="/api",
            public_prefix="/api/proxy",
        )

    assert rewrite("/api/videos/1") == "/api/proxy/videos/1"
    assert rewrite("http://127.0.0.1:3101/api/videos?page=2") == "/api/proxy/videos?page=2"
    assert rewrite("/apiary") == "/apiary"
    assert rewrite("https://cdn.example/file.mp4") == "https://cdn.example/file.mp4"
    # Every form in which the backend may name itself.
    assert rewrite("HTTP://127.0.0.1:3101/api/videos/1") == "/api/proxy/videos/1"
    assert rewrite("http://localhost:3101/api/videos/1") == "/api/proxy/videos/1"
    assert rewrite("//127.0.0.1:3101/api/videos/1") == "/api/proxy/videos/1"
    assert rewrite("http://LOCALHOST:3101/api") == "/api/proxy"
    # ...but not another port, another host, another scheme or another case of the path.
    assert rewrite("http://127.0.0.1:9999/api/x") == "http://127.0.0.1:9999/api/x"
    assert rewrite("//cdn.example/api/x") == "//cdn.example/api/x"
    assert rewrite("ftp://127.0.0.1:3101/api/x") == "ftp://127.0.0.1:3101/api/x"
    assert rewrite("/API/videos") == "/API/videos"


@pytest.mark.parametrize("path", ["", "/", "/videos", "/videos/1/content", "/a%2Fb", "/x%20y"])
def test_plain_paths_are_forwarded_unchanged(path: str) -> None:
    assert checked_upstream_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "/..",
        "/a/../b",
        "/%2e%2E",
        "//x",
        "/a%2F%2Fb",
        "/a%5Cb",
        "/%0a",
        "/javascript:x",
        "/..;/admin",
        "/a/..;x/b",
        "/%2e%2e;/x",
        "/%EF%BC%8E%EF%BC%8E/x",  # full-width dots
        "/%EF%BC%8E",
        "/\uff0e\uff0e/x",
    ],
)
def test_escaping_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        checked_upstream_path(path)


def test_log_lines_read_as_log_format_says_tracebacks_included() -> None:
    """The written-out formatter gives the very line `LOG_FORMAT` describes, traceback too."""
    ours = _OnceFormatter()
    stock = logging.Formatter(LOG_FORMAT)
    stock.formatTime = ours.formatTime  # type: ignore[method-assign]
    try:
        raise RuntimeError("backend went away")
    except RuntimeError:
        failure = sys.exc_info()
    for level, exc_info in ((logging.INFO, None), (logging.ERROR, failure)):
        record = logging.LogRecord(
            "sora2.proxy", level, __file__, 1, "GET %s %d", ("/api/proxy/x", 200), exc_info
        )
        record.request_id = "req-1"
        twin = logging.makeLogRecord(record.__dict__)
        assert ours.format(record) == stock.format(twin)
    assert "] GET /api/proxy/x 200\nTraceback" in ours.format(record)


def test_a_slow_half_open_probe_holds_others_back_no_longer_than_its_timeout() -> None:
    clock = FakeClock()
    circuit = CircuitBreaker(failure_threshold=1, open_time=0.5, probe_timeout=1.0, clock=clock)
    circuit.record_failure()
    clock.now += 0.5
    assert circuit.allow()  # the probe, which then takes its time
    clock.now += 0.9
    assert not circuit.allow()
    clock.now += 0.1
    assert circuit.allow()  # the slow probe no longer blocks: another request probes
    circuit.record_success()
    assert circuit.state is CircuitState.CLOSED
