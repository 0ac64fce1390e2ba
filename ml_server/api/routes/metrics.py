"""GET /metrics in the Prometheus text format.

With several workers (``PROMETHEUS_MULTIPROC_DIR`` set, ml_server/__main__.py) the counters and
histograms are every worker's, summed by prometheus_client's multiprocess collector; the
collectors that read state at scrape time (breakers, limits) show the answering worker's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ml_server.api.deps import StateDep
from ml_server.errors import ApiError

router = APIRouter(tags=["metrics"])


class _AllWorkers(Collector):
    """Every worker's counters, then this worker's other metrics (names not already given)."""

    def __init__(self, own: CollectorRegistry, folder: str) -> None:
        self._own = own
        self._folder = folder

    def collect(self) -> Iterator[Metric]:
        collector = MultiProcessCollector(None, path=self._folder)  # type: ignore[no-untyped-call]
        shared = list(collector.collect())  # type: ignore[no-untyped-call]
        names = {m.name for m in shared}
        yield from shared
        for metric in self._own.collect():
            if metric.name not in names:
                yield metric


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    if state.settings.effective_metrics_port != 0:  # served on METRICS_PORT instead
        raise ApiError(404, "Not Found", type="invalid_request_error", code="not_found")
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = state.metrics.registry
    if folder:
        registry = CollectorRegistry()
        registry.register(_AllWorkers(state.metrics.registry, folder))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
