"""Typed dependencies: the app state, the request's context, the caller's API key, the parsed
JSON body."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from ml_server.context import RequestContext, context_of
from ml_server.db.keys import KeyInfo
from ml_server.errors import ApiError, invalid_request
from ml_server.state import AppState

log = logging.getLogger(__name__)


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs sync dependencies on a thread pool (~0.1 ms each).
    state: AppState = request.app.state.ml
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_context(request: Request) -> RequestContext:
    """The request's ``RequestContext`` (made by ``RequestMiddleware``)."""
    return context_of(request.scope)


ContextDep = Annotated[RequestContext, Depends(get_context)]


async def require_key(request: Request, state: StateDep) -> KeyInfo:
    header = ""
    for name, value in request.scope["headers"]:  # cheaper than building request.headers
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>' "
            "(create one with `python -m ml_server keys create --name NAME`)",
            type="invalid_request_error",
            code="missing_api_key",
        )
    try:
        info = await state.keys.verify(token)
    except Exception as exc:
        log.warning("key lookup failed", extra={"fields": {"error": type(exc).__name__}})
        raise ApiError(
            503,
            "Cannot verify the API key right now (database unavailable); retry shortly",
            type="api_error",
            code="key_store_unavailable",
            retry_after="5",
        ) from exc
    if info is None:
        raise ApiError(
            401,
            "Incorrect API key provided",
            type="invalid_request_error",
            code="invalid_api_key",
        )
    # Accounting's key and the router's per-key fair share of a provider's concurrency.
    context_of(request.scope).key = info
    await state.governor.admit(request, info)  # expiry, models, budgets, RPM/TPM, concurrency
    return info


KeyDep = Annotated[KeyInfo, Depends(require_key)]


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object")
    return data


BodyDep = Annotated[dict[str, Any], Depends(json_body)]
