"""POST /v1/embeddings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ml_server.api.accounting import accounted_call
from ml_server.api.deps import BodyDep, KeyDep, StateDep
from ml_server.errors import invalid_request

router = APIRouter(prefix="/v1", tags=["embeddings"])


def _validate(body: dict[str, object]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", status=422, param="model")
    inputs = body.get("input")
    ok = isinstance(inputs, str) or (isinstance(inputs, list) and len(inputs) > 0)
    if not ok:
        raise invalid_request(
            "'input' is required: a string or a non-empty array", status=422, param="input"
        )


@router.post("/embeddings")
async def embeddings(request: Request, state: StateDep, _key: KeyDep, body: BodyDep) -> Response:
    _validate(body)
    route = state.router.resolve(str(body["model"]))
    started = time.perf_counter()
    call = state.router.embeddings(route, body)
    result = await accounted_call(
        state, request, route, call, endpoint="embeddings", started=started, body=body
    )
    return Response(result.body, media_type="application/json")
