"""The proxy's Prometheus figures.

Counting happens on every request, so it is plain integer arithmetic on this object; the figures
become Prometheus metric families only when `/metrics` is scraped (this object is a custom
collector). prometheus-client's own Counter takes a lock per increment, which cost more than
everything else the proxy does per request bar the I/O. All of it runs on the event loop's
thread, scrapes included, so no lock is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sora2.proxy._backends import OUTCOMES, Backend
from sora2.proxy._circuit import CircuitState

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.requests = dict.fromkeys(STATUS_CLASSES, 0)
        self.attempts = dict.fromkeys(OUTCOMES, 0)
        self.retries = 0
        self.budget_refusals = 0
        self.fail_fast = 0
        self.pool_timeouts = 0
        self.truncated_responses = 0
        self.tunnels = 0
        self.failovers = 0
        self._backends: Sequence[Backend] = ()
        self.circuit_state = CircuitState.CLOSED
        self.bytes_in = 0
        self.bytes_out = 0
        self._duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)

    def watch(self, backends: Sequence[Backend]) -> None:
        """Report these backends' own figures too (each labelled with its URL)."""
        self._backends = backends

    def count_request(self, status: int, duration: float) -> None:
        self.requests[STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]] += 1
        self._duration_buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        self._duration_sum += duration

    def count_attempt(self, outcome: str) -> None:
        self.attempts[outcome] += 1

    def add_bytes_out(self, count: int) -> None:
        self.bytes_out += count

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "sora2_proxy_requests", "Requests answered by the proxy, by status class",
            labels=["status_class"],
        )  # fmt: skip
        for status_class, count in self.requests.items():
            requests.add_metric([status_class], count)
        yield requests
        attempts = CounterMetricFamily(
            "sora2_proxy_upstream_attempts", "Attempts to reach the backend, by outcome",
            labels=["outcome"],
        )  # fmt: skip
        for outcome, count in self.attempts.items():
            attempts.add_metric([outcome], count)
        yield attempts
        yield CounterMetricFamily(
            "sora2_proxy_retries", "Attempts that were retries", value=self.retries
        )
        yield CounterMetricFamily(
            "sora2_proxy_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            value=self.budget_refusals,
        )
        yield CounterMetricFamily(
            "sora2_proxy_fail_fast",
            "Requests refused at once because the backend was known down",
            value=self.fail_fast,
        )
        yield CounterMetricFamily(
            "sora2_proxy_pool_timeouts",
            "Requests whose deadline passed while they waited for a free backend connection",
            value=self.pool_timeouts,
        )
        yield CounterMetricFamily(
            "sora2_proxy_truncated_responses",
            "Responses cut off mid-body because the backend broke off or went silent",
            value=self.truncated_responses,
        )
        yield CounterMetricFamily(
            "sora2_proxy_websocket_tunnels",
            "WebSocket upgrades the backend accepted and the proxy tunnelled",
            value=self.tunnels,
        )
        yield GaugeMetricFamily(
            "sora2_proxy_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            value=int(self.circuit_state),
        )
        yield CounterMetricFamily(
            "sora2_proxy_failovers",
            "Requests moved to another backend after an attempt failed",
            value=self.failovers,
        )
        yield from self._backend_families()
        yield self._duration_family()
        yield CounterMetricFamily(
            "sora2_proxy_request_bytes", "Request body bytes sent upstream", value=self.bytes_in
        )
        yield CounterMetricFamily(
            "sora2_proxy_response_bytes",
            "Response body bytes sent to clients",
            value=self.bytes_out,
        )

    def _backend_families(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "sora2_proxy_backend_attempts", "Attempts to reach each backend, by outcome",
            labels=["backend", "outcome"],
        )  # fmt: skip
        outstanding = GaugeMetricFamily(
            "sora2_proxy_backend_outstanding", "Requests in flight on each backend",
            labels=["backend"],
        )  # fmt: skip
        ejected = GaugeMetricFamily(
            "sora2_proxy_backend_ejected", "1 while a backend is out of rotation, else 0",
            labels=["backend"],
        )  # fmt: skip
        ejections = CounterMetricFamily(
            "sora2_proxy_backend_ejections", "Times each backend was taken out of rotation",
            labels=["backend"],
        )  # fmt: skip
        circuit = GaugeMetricFamily(
            "sora2_proxy_backend_circuit_state",
            "Each backend's circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["backend"],
        )
        for backend in self._backends:
            label = [backend.url]
            for outcome, count in backend.attempts.items():
                attempts.add_metric([backend.url, outcome], count)
            outstanding.add_metric(label, backend.outstanding)
            ejected.add_metric(label, int(backend.ejected))
            ejections.add_metric(label, backend.ejections)
            circuit.add_metric(label, int(backend.circuit.state))
        yield from (attempts, outstanding, ejected, ejections, circuit)

    def _duration_family(self) -> HistogramMetricFamily:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(DURATION_BUCKETS, self._duration_buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        cumulative += self._duration_buckets[-1]
        buckets.append(("+Inf", cumulative))
        return HistogramMetricFamily(
            "sora2_proxy_request_duration_seconds",
            "Time the proxy took to answer, up to the response headers",
            buckets=buckets,
            sum_value=self._duration_sum,
        )
