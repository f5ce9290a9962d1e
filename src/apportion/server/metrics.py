"""Prometheus metrics for one server app (its own CollectorRegistry, so apps never share
counters: two apps in one process, as in tests, each count only their own requests).

Labels are the strategy that answered (`direct`, `symbolic`, ...; parameters dropped, so the
label set stays as small as the registry) and, for requests, the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apportion.strategies.registry import spec_name

if TYPE_CHECKING:
    from apportion.engines.pool import ReplicaState

# Outcomes a request can end in.
OK = "ok"  # an answer
NO_ANSWER = "no_answer"  # every strategy failed (the reply says why)
BUDGET = "budget"  # refused or stopped by its budget
CANCELLED = "cancelled"  # the client went away
TIMEOUT = "timeout"
REJECTED = "rejected"  # queue full, or a key's daily budget spent
UNAUTHORIZED = "unauthorized"
INVALID = "invalid"  # malformed request
ERROR = "error"  # engine or server failure

NO_STRATEGY = "none"  # the label for requests that never reached a strategy

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FLOPS_BUCKETS = tuple(10.0**e for e in range(6, 16))


def strategy_label(spec: str) -> str:
    return spec_name(spec) or NO_STRATEGY


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "apportion_requests", "Chat completion requests.", ["strategy", "outcome"], registry=r
        )
        self.tokens = Counter(
            "apportion_tokens", "Model tokens charged.", ["strategy", "kind"], registry=r
        )
        self.flops = Counter("apportion_flops", "Model FLOPs charged.", ["strategy"], registry=r)
        self.cost = Counter("apportion_cost_usd", "Dollars charged.", ["strategy"], registry=r)
        self.latency = Histogram(
            "apportion_request_seconds",
            "Wall time of a request's work.",
            ["strategy"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_flops = Histogram(
            "apportion_request_flops",
            "FLOPs per request.",
            ["strategy"],
            buckets=_FLOPS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "apportion_requests_in_flight", "Requests being worked on.", [], registry=r
        )
        self.local_waiting = Gauge(
            "apportion_local_queue_waiting",
            "Requests waiting for the in-process llama.cpp engine.",
            registry=r,
        )

    def watch_replicas(self, replicas: Callable[[], dict[str, list[ReplicaState]]]) -> None:
        """Report each engine pool's replicas at every scrape: health, calls outstanding, and
        calls served and failed."""
        self.registry.register(_ReplicaCollector(replicas))

    def watch_queue(self, waiting: Callable[[], int]) -> None:
        self.local_waiting.set_function(lambda: float(waiting()))

    def finished(
        self,
        strategy: str,
        outcome: str,
        *,
        seconds: float,
        prompt_tokens: int,
        completion_tokens: int,
        flops: float,
        cost_usd: float,
    ) -> None:
        label = strategy_label(strategy)
        self.requests.labels(label, outcome).inc()
        self.tokens.labels(label, "prompt").inc(prompt_tokens)
        self.tokens.labels(label, "completion").inc(completion_tokens)
        self.flops.labels(label).inc(flops)
        self.cost.labels(label).inc(cost_usd)
        self.latency.labels(label).observe(seconds)
        self.request_flops.labels(label).observe(flops)

    def refused(self, outcome: str) -> None:
        """A request turned away before any work (bad input, no key, full queue)."""
        self.requests.labels(NO_STRATEGY, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ReplicaCollector(Collector):
    """The replicas of engine pools, read when /metrics is scraped (they change per call)."""

    def __init__(self, replicas: Callable[[], dict[str, list[ReplicaState]]]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[Metric]:
        labels = ["engine", "replica"]
        healthy = GaugeMetricFamily(
            "apportion_replica_healthy", "1 if the replica takes calls, 0 while ejected.",
            labels=labels,
        )  # fmt: skip
        outstanding = GaugeMetricFamily(
            "apportion_replica_outstanding", "Calls in flight on the replica.", labels=labels
        )
        served = CounterMetricFamily(
            "apportion_replica_calls", "Calls the replica answered.", labels=labels
        )
        failed = CounterMetricFamily(
            "apportion_replica_failures", "Calls the replica failed (then tried elsewhere).",
            labels=labels,
        )  # fmt: skip
        now = time.monotonic()
        for engine, states in self._replicas().items():
            for state in states:
                key = [engine, state.url]
                healthy.add_metric(key, 1.0 if state.healthy(now) else 0.0)
                outstanding.add_metric(key, float(state.outstanding))
                served.add_metric(key, float(state.served))
                failed.add_metric(key, float(state.failed))
        yield from (healthy, outstanding, served, failed)

    def describe(self) -> Iterator[Metric]:
        return iter(())
