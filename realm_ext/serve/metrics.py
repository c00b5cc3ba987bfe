"""Prometheus metrics of one server (its own registry, so that several apps in one
process, as in the tests, do not share counters), served at GET /metrics in the text
exposition format."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _PoolCollector(Collector):
    """realm_serve_guests{tenant, model, state}: the pools' guests, read at scrape time."""

    def __init__(self, counts: Callable[[], Iterable[tuple[str, str, int, int]]]):
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "realm_serve_guests", "Pooled guests by state", labels=["tenant", "model", "state"]
        )
        for tenant, model, idle, busy in self._counts():
            g.add_metric([tenant, model, "idle"], idle)
            g.add_metric([tenant, model, "busy"], busy)
        yield g


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self, pool_counts: Callable[[], Iterable[tuple[str, str, int, int]]] = lambda: ()):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "realm_serve_requests",
            "Requests by endpoint, tenant and HTTP status",
            ["endpoint", "tenant", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "realm_serve_prompt_tokens", "Prompt tokens of finished requests", ["tenant", "model"], registry=r
        )
        self.completion_tokens = Counter(
            "realm_serve_completion_tokens", "Tokens generated", ["tenant", "model"], registry=r
        )
        self.reused_tokens = Counter(
            "realm_serve_reused_prompt_tokens",
            "Chat prompt tokens reused from a guest's KV ring",
            ["tenant", "model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "realm_serve_in_flight_requests", "Requests admitted and not finished", ["tenant"], registry=r
        )
        self.queue_depth = Gauge(
            "realm_serve_queue_depth", "Admitted requests waiting for a worker thread", registry=r
        )
        self.request_seconds = Histogram(
            "realm_serve_request_seconds",
            "Time from the request to its last piece",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "realm_serve_time_to_first_token_seconds",
            "Time from the request to its first piece",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.guests_replaced = Counter(
            "realm_serve_guests_replaced",
            "Guests closed after an error and replaced",
            ["tenant", "model"],
            registry=r,
        )
        r.register(_PoolCollector(pool_counts))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
