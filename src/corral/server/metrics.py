"""Prometheus metrics of one server (its own registry, so tests can run many servers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.server.store.rows import QueueInfo


class _StoreCollector(Collector):
    def __init__(self, source: Callable[[], tuple[list[QueueInfo], int]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queues, active = self.source()
        depth = GaugeMetricFamily("corral_queue_jobs", "Jobs per queue and state", labels=["queue", "state"])
        for q in queues:
            for state, n in q.counts.items():
                depth.add_metric([q.name, state], n)
        yield depth
        yield GaugeMetricFamily("corral_executors_active", "Executors seen recently", value=active)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.enqueued = Counter("corral_jobs_enqueued", "Jobs submitted", ["queue"], registry=self.registry)
        self.dequeued = Counter(
            "corral_jobs_dequeued", "Jobs handed to executors", ["queue"], registry=self.registry
        )
        self.finished = Counter(
            "corral_jobs_finished",
            "Attempts ended, by resulting state",
            ["queue", "state"],
            registry=self.registry,
        )
        self.resets = Counter("corral_jobs_reset", "Stalled jobs requeued or failed", registry=self.registry)
        self.long_polls = Gauge(
            "corral_long_polls_waiting", "Held dequeue and cancel-watch requests", registry=self.registry
        )

    def watch_store(self, source: Callable[[], tuple[list[QueueInfo], int]]) -> None:
        self.registry.register(_StoreCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
