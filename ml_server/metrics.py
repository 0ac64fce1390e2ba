"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlserver_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.request_latency = Histogram(
            "mlserver_request_duration_seconds",
            "HTTP request duration (to the last byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_requests = Counter(
            "mlserver_provider_requests_total",
            "Calls to providers by outcome status",
            ["provider", "status"],
            registry=r,
        )
        self.provider_errors = Counter(
            "mlserver_provider_errors_total",
            "Provider failures by kind (http_4xx, http_5xx, rate_limited, timeout, connection)",
            ["provider", "kind"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "mlserver_provider_latency_seconds",
            "Time to the provider's response headers",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "mlserver_tokens_total", "Tokens by provider and kind", ["provider", "kind"], registry=r
        )
        self.usage_queue_depth = Gauge(
            "mlserver_usage_queue_depth", "Usage rows waiting to be written", registry=r
        )
        self.usage_rows_written = Counter(
            "mlserver_usage_rows_written_total", "Usage rows written to the database", registry=r
        )
        self.usage_rows_dropped = Counter(
            "mlserver_usage_rows_dropped_total",
            "Usage rows dropped because the queue was full",
            registry=r,
        )
        self.usage_write_errors = Counter(
            "mlserver_usage_write_errors_total", "Failed batch writes (retried)", registry=r
        )
        self.usage_rows_quarantined = Counter(
            "mlserver_usage_rows_quarantined_total",
            "Usage rows the database refused (value out of range, ...): kept in usage_quarantine",
            registry=r,
        )
        self.usage_rows_spooled = Counter(
            "mlserver_usage_rows_spooled_total",
            "Usage rows kept in the local spool (database unreachable, shutdown)",
            registry=r,
        )
        self.usage_rows_replayed = Counter(
            "mlserver_usage_rows_replayed_total",
            "Usage rows written from the local spool",
            registry=r,
        )
        self.usage_spool_bytes = Gauge(
            "mlserver_usage_spool_bytes", "Size of the local usage spool", registry=r
        )
        self.usage_writer_stuck = Gauge(
            "mlserver_usage_writer_stuck",
            "1 when rows wait and nothing was written for USAGE_STUCK_SECONDS",
            registry=r,
            # Several workers: the max of the live ones (worker_registry forgets exited ones).
            multiprocess_mode="livemax",
        )
        self.usage_unpriced_rows = Counter(
            "mlserver_usage_unpriced_rows_total",
            "Usage rows with tokens whose model has no price in the catalogue (cost NULL)",
            ["provider"],
            registry=r,
        )
        # Label children bound once: ``.labels()`` costs a lock and a tuple build per call.
        self._children: dict[tuple[Any, ...], Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self.requests.labels(route, method, str(status)),
                self.request_latency.labels(route),
            )
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def count_unpriced(self, provider: str) -> None:
        key = ("unpriced", provider)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.usage_unpriced_rows.labels(provider)
        child.inc()

    def count_tokens(self, provider: str, kind: str, n: int) -> None:
        key = ("tokens", provider, kind)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.tokens.labels(provider, kind)
        child.inc(n)


class _LiveWorkersCollector(MultiProcessCollector):
    """prometheus_client's multiprocess collector, after forgetting the ``live*`` gauges of
    workers that exited (``mark_process_dead``, which the uvicorn supervisor never calls): a
    worker that died while its usage writer was stuck no longer holds the alarm."""

    def collect(self) -> Iterable[Metric]:
        for path in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            pid = int(os.path.basename(path).rsplit("_", 1)[1].removesuffix(".db"))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                mark_process_dead(pid, self._path)  # type: ignore[no-untyped-call]
            except PermissionError:
                pass  # alive, another user's
        return super().collect()  # type: ignore[no-untyped-call,no-any-return]


def worker_registry(folder: str) -> CollectorRegistry:
    """The registry the metrics port serves with several workers: every worker's counters
    summed, the ``live*`` gauges of the live workers only (``folder``: PROMETHEUS_MULTIPROC_DIR)."""
    registry = CollectorRegistry()
    _LiveWorkersCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return registry
