"""The proxy's Prometheus figures, in a registry of its own so several proxies never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sora2.proxy._circuit import CircuitState

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_OUTCOMES = ("response", "refused", "connect_error", "reset", "timeout")


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        requests = Counter(
            "sora2_proxy_requests",
            "Requests answered by the proxy, by status class",
            ["status_class"],
            registry=self.registry,
        )
        attempts = Counter(
            "sora2_proxy_upstream_attempts",
            "Attempts to reach the backend, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "sora2_proxy_retries", "Attempts that were retries", registry=self.registry
        )
        self.budget_refusals = Counter(
            "sora2_proxy_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            registry=self.registry,
        )
        self.fail_fast = Counter(
            "sora2_proxy_fail_fast",
            "Requests refused at once because the backend was known down",
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "sora2_proxy_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            registry=self.registry,
        )
        self.duration = Histogram(
            "sora2_proxy_request_duration_seconds",
            "Time from request to response headers",
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
            ),
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "sora2_proxy_request_bytes", "Request body bytes sent upstream", registry=self.registry
        )
        self.bytes_out = Counter(
            "sora2_proxy_response_bytes",
            "Response body bytes sent to clients",
            registry=self.registry,
        )
        # Label children bound once: `.labels()` is a dict lookup plus a lock on the hot path.
        self._requests = {name: requests.labels(name) for name in _STATUS_CLASSES}
        self._attempts = {name: attempts.labels(name) for name in _OUTCOMES}

    def count_request(self, status: int) -> None:
        self._requests[_STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]].inc()

    def count_attempt(self, outcome: str) -> None:
        self._attempts[outcome].inc()

    def set_circuit(self, state: CircuitState) -> None:
        self.circuit_state.set(int(state))
