"""OpenAI's Responses API, passed through to OpenAI.

``POST /v1/responses`` (plain and streamed): same keys, limits, usage rows (endpoint
``responses``) and retries as the chat route; an alias falls back only among its OpenAI targets.
Models of other providers get a 400 that says why (``ml_server.providers.responses``).

``GET``/``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and
``POST /v1/responses/{id}/cancel``: OpenAI stores a response under the gateway's credential, so
the gateway records which key created it (table ``response_owners``, migration 0008) and
answers these only for that key; any other key (or an id not created through the gateway) gets
the 404 OpenAI gives for an unknown id, so a key cannot even learn that another key's id exists.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from datetime import UTC, datetime, timedelta

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ml_server.api.accounting import accounted_call
from ml_server.api.deps import BodyDep, KeyDep, StateDep
from ml_server.api.routes.chat import EventStreamResponse
from ml_server.api.routes.messages import open_stream, relay
from ml_server.db.models import ResponseOwner
from ml_server.errors import ApiError, invalid_request
from ml_server.providers.openai_compat import OpenAICompatProvider
from ml_server.providers.responses import (
    RESPONSES_PROVIDERS,
    OnCreated,
    ResponsesAdapter,
    stored_call,
)
from ml_server.router import Route
from ml_server.state import AppState

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["responses"])

KEEPALIVE = b": keep-alive\n\n"


def _error_event(exc: ApiError) -> bytes:
    data = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def _responses_route(route: Route, model: str, on_created: OnCreated | None = None) -> Route:
    targets = tuple(
        # The same breaker and concurrency slots as the provider's chat route.
        dataclasses.replace(t, provider=ResponsesAdapter(t.provider, on_created))
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


# OpenAI keeps a stored response 30 days (Responses API reference, "store"); rows older than
# that are pruned now and then (every PRUNE_EVERY records of a process).
RETENTION = timedelta(days=30)
PRUNE_EVERY = 500
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class ResponseOwners:
    """The ``response_owners`` table: which key created which stored response."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._recorded = 0

    async def record(self, response_id: str, key_id: int, provider: str) -> None:
        """Best effort: the response exists at OpenAI already; if the row cannot be written the
        id is simply not readable through the gateway (logged)."""
        try:
            async with self._state.sessions() as session, session.begin():
                session.add(ResponseOwner(response_id=response_id, key_id=key_id,
                                          provider=provider))  # fmt: skip
            self._recorded += 1
            if self._recorded % PRUNE_EVERY == 0:
                await self._prune()
        except IntegrityError:
            log.warning("response id recorded twice", extra={"fields": {"id": response_id}})
        except Exception as exc:
            log.warning(
                "response owner not recorded",
                extra={"fields": {"id": response_id, "error": type(exc).__name__}},
            )

    async def owner(self, response_id: str) -> tuple[int, str] | None:
        async with self._state.sessions() as session:
            row = (
                await session.execute(
                    select(ResponseOwner.key_id, ResponseOwner.provider).where(
                        ResponseOwner.response_id == response_id
                    )
                )
            ).first()
        return (int(row[0]), str(row[1])) if row is not None else None

    async def forget(self, response_id: str) -> None:
        async with self._state.sessions() as session, session.begin():
            await session.execute(
                delete(ResponseOwner).where(ResponseOwner.response_id == response_id)
            )

    async def _prune(self) -> None:
        cutoff = datetime.now(UTC) - RETENTION
        async with self._state.sessions() as session, session.begin():
            await session.execute(delete(ResponseOwner).where(ResponseOwner.created_at < cutoff))


def _owners(request: Request, state: AppState) -> ResponseOwners:
    owners: ResponseOwners | None = getattr(request.app.state, "response_owners", None)
    if owners is None:
        owners = request.app.state.response_owners = ResponseOwners(state)
    return owners


@router.post("/responses")
async def create_response(
    request: Request, state: StateDep, key: KeyDep, body: BodyDep
) -> Response:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", status=422, param="model")
    if not isinstance(body.get("stream", False), bool | None):
        raise invalid_request("'stream' must be a boolean", status=422, param="stream")
    await _check_references(request, state, key.id, body)
    on_created: OnCreated | None = None
    if body.get("store") is not False:  # store: false -> nothing kept at OpenAI to read back
        owners = _owners(request, state)

        async def on_created(response_id: str) -> None:
            await owners.record(response_id, key.id, "openai")

    route = _responses_route(state.router.resolve(model), model, on_created)
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


async def _check_references(
    request: Request, state: AppState, key_id: int, body: dict[str, object]
) -> None:
    """A new response may continue only this key's own stored responses: OpenAI would otherwise
    hand another key's conversation to the model. Conversations are not offered (no route to
    create them here, so no owner to check)."""
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str) or not _ID.fullmatch(previous):
            raise invalid_request(
                "'previous_response_id' must be a response id", param="previous_response_id"
            )
        found = await _owners(request, state).owner(previous)
        if found is None or found[0] != key_id:
            error = _not_found(previous)
            error.param = "previous_response_id"
            raise error
    if body.get("conversation") is not None:
        raise invalid_request(
            "'conversation' is not offered: this gateway does not expose the Conversations API, "
            "so it cannot check whose conversation it is; use previous_response_id",
            param="conversation",
        )


def _not_found(response_id: str) -> ApiError:
    return ApiError(
        404,
        f"Response with id '{response_id}' not found.",
        type="invalid_request_error",
        code="response_not_found",
        kind="http_4xx",
        param="response_id",
    )


async def _stored(
    request: Request, state: AppState, key_id: int, response_id: str, method: str, suffix: str
) -> Response:
    """The caller's own stored response, passed through to OpenAI with the gateway's key."""
    if not _ID.fullmatch(response_id):
        raise _not_found(response_id[:128])
    found = await _owners(request, state).owner(response_id)
    provider = state.router.providers.get(found[1]) if found is not None else None
    if found is None or found[0] != key_id or not isinstance(provider, OpenAICompatProvider):
        raise _not_found(response_id)
    query = [(k, v) for k, v in request.query_params.multi_items()]
    if any(k == "stream" and v.lower() not in ("false", "0") for k, v in query):
        raise invalid_request(
            "stream=true is not offered on GET /v1/responses/{id}: read the stored response "
            "without it",
            param="stream",
        )
    status, raw = await stored_call(provider, method, response_id, suffix, query)
    if method == "DELETE":
        await _owners(request, state).forget(response_id)
    return Response(raw, status_code=status, media_type="application/json")


@router.get("/responses/{response_id}")
async def retrieve_response(
    response_id: str, request: Request, state: StateDep, key: KeyDep
) -> Response:
    return await _stored(request, state, key.id, response_id, "GET", "")


@router.delete("/responses/{response_id}")
async def delete_response(
    response_id: str, request: Request, state: StateDep, key: KeyDep
) -> Response:
    return await _stored(request, state, key.id, response_id, "DELETE", "")


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str, request: Request, state: StateDep, key: KeyDep
) -> Response:
    return await _stored(request, state, key.id, response_id, "GET", "/input_items")


@router.post("/responses/{response_id}/cancel")
async def cancel_response(
    response_id: str, request: Request, state: StateDep, key: KeyDep
) -> Response:
    return await _stored(request, state, key.id, response_id, "POST", "/cancel")
