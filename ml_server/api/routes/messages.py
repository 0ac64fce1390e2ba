"""POST /v1/messages (plain and streamed) and /v1/messages/count_tokens: the Anthropic API.

Same keys (``x-api-key`` as the Anthropic SDK sends it, or ``Authorization: Bearer``), per-key
limits, usage rows (endpoint ``messages``), retries and fallbacks as the chat route. Claude
models get the request as it is (native pass-through); OpenAI-format providers get it
translated (``ml_server.providers.messages_translate``). Errors come in Anthropic's shape:
``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ml_server.api.accounting import account, accounted_call, estimate_usage, failed_on, left_on
from ml_server.api.deps import json_body, require_key
from ml_server.api.routes.chat import EventStreamResponse
from ml_server.catalog import Catalog
from ml_server.errors import ApiError, invalid_request
from ml_server.providers.anthropic import AnthropicProvider
from ml_server.providers.base import ChatStream, ProviderError, Usage
from ml_server.providers.messages_translate import MessagesAdapter
from ml_server.router import Route, Served, Target
from ml_server.state import AppState

router = APIRouter(prefix="/v1", tags=["messages"])

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_FORWARDED = ("anthropic-version", "anthropic-beta")


def _error_data(exc: ApiError) -> bytes:
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": exc.message}})


def anthropic_error(exc: ApiError) -> Response:
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
    return Response(
        _error_data(exc), status_code=exc.status, media_type="application/json", headers=headers
    )


async def _authorized(request: Request, state: AppState) -> dict[str, Any]:
    """The key check of every route (x-api-key accepted as a bearer token), then the body."""
    headers = request.scope["headers"]
    if not any(name == b"authorization" for name, _ in headers):
        for name, value in headers:
            if name == b"x-api-key":
                request.scope["headers"] = [*headers, (b"authorization", b"Bearer " + value)]
                break
    await require_key(request, state)
    body = await json_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", param="model")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise invalid_request("'messages' must be a non-empty array", param="messages")
    if not isinstance(body.get("stream", False), bool):
        raise invalid_request("'stream' must be a boolean", param="stream")
    return body


def _forwarded(request: Request) -> dict[str, str]:
    return {k: v for k in _FORWARDED if (v := request.headers.get(k))}


def _adapted(route: Route, headers: dict[str, str], catalog: Catalog) -> Route:
    def cap(t: Target) -> int | None:  # the model's max output, for translated requests
        entry = catalog.find(t.provider.name, t.model)
        return entry.max_output_tokens if entry is not None else None

    # The same breaker and concurrency slots as the provider's chat route (replace keeps them).
    return Route(
        tuple(
            dataclasses.replace(t, provider=MessagesAdapter(t.provider, headers, cap(t)))
            for t in route.targets
        )
    )


@router.post("/messages")
async def messages(request: Request) -> Response:
    state: AppState = request.app.state.ml
    try:
        body = await _authorized(request, state)
        route = _adapted(
            state.router.resolve(body["model"]), _forwarded(request), state.router.catalog
        )
        started = time.perf_counter()
        if not body.get("stream"):
            call = state.router.chat(route, body)
            result = await accounted_call(
                state, request, route, call, endpoint="messages", started=started
            )
            return Response(result.body, media_type="application/json")
        opening = await open_stream(
            state, request, route, body, endpoint="messages", started=started
        )
    except ApiError as exc:
        return anthropic_error(exc)
    return EventStreamResponse(
        relay(state, request, route, opening, started, endpoint="messages",
              keepalive_event=PING, error_event=_messages_error_event, body=body)
    )  # fmt: skip


async def relay(
    state: AppState,
    request: Request,
    route: Route,
    opening: asyncio.Future[Served[ChatStream]],
    started: float,
    *,
    endpoint: str,
    keepalive_event: bytes,
    error_event: Callable[[ApiError], bytes],
    body: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """Send a stream opened by the router: keep-alive events until it opens, its events, an
    error event if it fails; the usage row is written at the end (499 if the client left)."""
    keepalive = state.settings.stream_keepalive_seconds
    status = 200
    upstream: ChatStream | None = None
    target: Target | None = None  # who served (or failed) the stream
    events_out = 0  # for the estimate when no usage comes
    try:
        while not opening.done():
            done, _ = await asyncio.wait({opening}, timeout=keepalive)
            if not done:
                yield keepalive_event
        try:
            served = opening.result()
            upstream, target = served.result, served.target
            async for event in upstream.events():
                events_out += event.count(b"data: ")
                yield event
        except ApiError as exc:
            status = exc.status
            if target is None:
                target = exc.target
            yield error_event(exc)
    except (asyncio.CancelledError, GeneratorExit):
        status = 499
        raise
    finally:
        if not opening.done():
            opening.cancel()
        usage = Usage()
        if upstream is not None:
            await upstream.aclose()
            usage = upstream.usage
            if not (usage.prompt_tokens or usage.completion_tokens):
                usage = estimate_usage(body, events_out)  # opened, so billed: flagged estimate
        account(state, request, target or left_on(request, route), endpoint=endpoint,
                stream=True, status=status, usage=usage, started=started)  # fmt: skip


async def open_stream(
    state: AppState,
    request: Request,
    route: Route,
    body: dict[str, Any],
    *,
    endpoint: str,
    started: float,
) -> asyncio.Future[Served[ChatStream]]:
    """Start opening the stream; wait up to the keep-alive interval so that an early refusal
    keeps its HTTP status (raised, with its usage row)."""
    opening = asyncio.ensure_future(state.router.chat_stream(route, body))
    await asyncio.wait({opening}, timeout=state.settings.stream_keepalive_seconds)
    failure = opening.exception() if opening.done() else None
    if failure is not None:
        if isinstance(failure, ProviderError):
            account(state, request, failed_on(failure, route), endpoint=endpoint, stream=True,
                    status=failure.status, usage=Usage(), started=started)  # fmt: skip
        raise failure
    return opening


def _messages_error_event(exc: ApiError) -> bytes:
    return b"event: error\ndata: " + _error_data(exc) + b"\n\n"


@router.post("/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Anthropic's token count (free at Anthropic; no usage row). Claude models only."""
    state: AppState = request.app.state.ml
    try:
        body = await _authorized(request, state)
        route = state.router.resolve(body["model"])
        target = route.targets[0]
        if not isinstance(target.provider, AnthropicProvider):
            raise invalid_request(
                f"count_tokens is offered for Anthropic models only; '{body['model']}' is served "
                f"by {target.provider.name}",
                param="model",
            )
        raw = await target.provider.count_tokens(target.model, body, _forwarded(request))
    except ApiError as exc:
        return anthropic_error(exc)
    return Response(raw, media_type="application/json")
