"""The stuck-writer gauge as the agent scrapes it from several workers (prometheus_client's
multiprocess mode, the server's WEB_CONCURRENCY > 1 path): a worker that exits while stuck must
not hold the UsageWriterStuck alarm. Real worker processes write the real multiprocess files;
the collector is the one the metrics port serves (ml_server/__main__.py)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

STUCK = "mlserver_usage_writer_stuck"


def _worker(stuck: int, ready: Any, leave: Any) -> None:
    """A server worker: its Metrics (prometheus_client imported with PROMETHEUS_MULTIPROC_DIR
    set, so the values live in the shared folder), the stuck gauge set, then wait."""
    from ml_server.metrics import Metrics

    Metrics().usage_writer_stuck.set(stuck)
    ready.set()
    leave.wait(30)


def _scrape(folder: Path) -> list[float]:
    """What the agent reads on the metrics port: every sample of the stuck gauge."""
    from ml_server.metrics import worker_registry

    registry: CollectorRegistry = worker_registry(str(folder))
    text = generate_latest(registry).decode()
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == STUCK
        for sample in family.samples
    ]


def test_a_worker_that_exits_while_stuck_no_longer_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter reads the variable
    leave_stuck, leave_ok = spawn.Event(), spawn.Event()
    started = []
    for stuck, leave in ((1, leave_stuck), (0, leave_ok)):
        ready = spawn.Event()
        worker = spawn.Process(target=_worker, args=(stuck, ready, leave))
        worker.start()
        assert ready.wait(60), "worker did not start"
        started.append(worker)
    try:
        assert _scrape(tmp_path) == [1.0]  # one series (no pid label): the max of the workers
        leave_stuck.set()  # the stuck worker exits (uvicorn starts a replacement)
        started[0].join(30)
        assert started[0].exitcode == 0
        assert any(p.name.endswith(f"_{started[0].pid}.db") for p in tmp_path.iterdir())
        assert _scrape(tmp_path) == [0.0]  # its stale 1 is gone; the live worker's 0 remains
    finally:
        leave_ok.set()
        for worker in started:
            worker.join(30)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
