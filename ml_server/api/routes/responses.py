"""POST /v1/responses: OpenAI's Responses API, passed through to OpenAI (plain and streamed).

Same keys, limits, usage rows (endpoint ``responses``) and retries as the chat route; an alias
falls back only among its OpenAI targets. Models of other providers get a 400 that says why
(``ml_server.providers.responses``).
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ml_server.api.accounting import accounted_call
from ml_server.api.deps import BodyDep, KeyDep, StateDep
from ml_server.api.routes.chat import EventStreamResponse
from ml_server.api.routes.messages import open_stream, relay
from ml_server.errors import ApiError, invalid_request
from ml_server.providers.openai_compat import OpenAICompatProvider
from ml_server.providers.responses import RESPONSES_PROVIDERS, ResponsesAdapter
from ml_server.router import Route, Target

router = APIRouter(prefix="/v1", tags=["responses"])

KEEPALIVE = b": keep-alive\n\n"


def _error_event(exc: ApiError) -> bytes:
    data = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def _responses_route(route: Route, model: str) -> Route:
    targets = tuple(
        Target(ResponsesAdapter(t.provider), t.model, t.breaker)
        for t in route.targets
        if isinstance(t.provider, OpenAICompatProvider) and t.provider.name in RESPONSES_PROVIDERS
    )
    if not targets:
        served = ", ".join(sorted({t.provider.name for t in route.targets}))
        raise invalid_request(
            f"/v1/responses is offered for OpenAI models only ('{model}' is served by {served}): "
            "the Responses API keeps state at OpenAI (previous_response_id, stored responses, "
            "built-in tools) that a translation would lose; use /v1/chat/completions or "
            "/v1/messages for this model",
            param="model",
        )
    return Route(targets)


@router.post("/responses")
async def create_response(
    request: Request, state: StateDep, _key: KeyDep, body: BodyDep
) -> Response:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", status=422, param="model")
    if not isinstance(body.get("stream", False), bool | None):
        raise invalid_request("'stream' must be a boolean", status=422, param="stream")
    route = _responses_route(state.router.resolve(model), model)
    started = time.perf_counter()
    if not body.get("stream"):
        call = state.router.chat(route, body)
        result = await accounted_call(
            state, request, route, call, endpoint="responses", started=started
        )
        return Response(result.body, media_type="application/json")
    opening = await open_stream(state, request, route, body, endpoint="responses", started=started)
    return EventStreamResponse(
        relay(state, request, route, opening, started, endpoint="responses",
              keepalive_event=KEEPALIVE, error_event=_error_event, body=body)
    )  # fmt: skip
