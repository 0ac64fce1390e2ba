"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ml_server.api.deps import StateDep
from ml_server.errors import ApiError

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    if state.settings.effective_metrics_port != 0:  # served on METRICS_PORT instead
        raise ApiError(404, "Not Found", type="invalid_request_error", code="not_found")
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
