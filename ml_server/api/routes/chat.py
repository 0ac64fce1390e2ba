"""POST /v1/chat/completions, plain and streamed (SSE with keep-alive comments)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ml_server.api.accounting import (
    account,
    accounted_call,
    estimate_usage,
    failed_on,
    left_on,
)
from ml_server.api.deps import BodyDep, KeyDep, StateDep
from ml_server.errors import ApiError, invalid_request
from ml_server.memory.chat import inject_memories
from ml_server.providers.base import ChatStream, ProviderError, Usage
from ml_server.router import Route, Served, Target
from ml_server.state import AppState

router = APIRouter(prefix="/v1", tags=["chat"])

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SSE_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]


class EventStreamResponse(Response):
    """``text/event-stream`` over an async iterator of bytes, sent chunk by chunk.

    Starlette's StreamingResponse, under uvicorn (ASGI 2.3), runs every stream in an anyio task
    group with a second task waiting for the disconnect. Here that listener is one plain task,
    started once the first chunk is out (so it never delays the first token), which cancels the
    stream when the client goes away; the stream's own cleanup (accounting as 499) then runs.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        listener: asyncio.Future[Message] | None = None
        gone = finished = False

        def on_message(f: asyncio.Future[Message]) -> None:
            nonlocal gone
            if finished or f.cancelled() or f.exception() is not None:
                return
            if f.result().get("type") == "http.disconnect" and task is not None:
                gone = True
                task.cancel()

        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if listener is None:
                    listener = asyncio.ensure_future(receive())
                    listener.add_done_callback(on_message)
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone or task is None:
                raise
            task.uncancel()  # the client left: the stream ended, this request is done
        finally:
            finished = True
            if listener is not None and not listener.done():
                listener.cancel()


def _content_ok(content: Any) -> bool:
    if content is None or isinstance(content, str):
        return True
    return isinstance(content, list) and all(isinstance(p, dict) for p in content)


def _validate(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", status=422, param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request(
            "'messages' is required and must be a non-empty array", status=422, param="messages"
        )
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise invalid_request(
                f"messages[{i}] must be an object whose 'role' is one of {sorted(ROLES)}",
                status=422,
                param=f"messages[{i}].role",
            )
        if not _content_ok(msg.get("content")):
            raise invalid_request(
                f"messages[{i}].content must be a string, an array of content parts "
                "(objects) or null",
                status=422,
                param=f"messages[{i}].content",
            )
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise invalid_request("'stream' must be a boolean", status=422, param="stream")


def _error_event(exc: ApiError) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {
                "error": {
                    "message": exc.message,
                    "type": exc.type,
                    "param": exc.param,
                    "code": exc.code,
                }
            }
        )
        + b"\n\n"
    )


@router.post("/chat/completions")
async def chat_completions(
    request: Request, state: StateDep, _key: KeyDep, body: BodyDep
) -> Response:
    _validate(body)
    endpoint = "chat"
    if "memory" in body:  # opt-in retrieval (ml_server/memory/chat.py); absent: one dict lookup
        await inject_memories(state, request, _key, body)
        endpoint = "chat+memory"
    route = state.router.resolve(body["model"])
    started = time.perf_counter()
    if not body.get("stream"):
        call = state.router.chat(route, body)
        result = await accounted_call(
            state, request, route, call, endpoint=endpoint, started=started, body=body
        )
        return Response(result.body, media_type="application/json")

    # Wait briefly for the provider's answer so an early refusal (429, 400, ...) keeps its status;
    # past the keep-alive interval commit to 200 and keep the connection alive with SSE comments.
    opening = asyncio.ensure_future(state.router.chat_stream(route, body))
    keepalive = state.settings.stream_keepalive_seconds
    try:
        await asyncio.wait({opening}, timeout=keepalive)
    except asyncio.CancelledError:  # the client left before the stream opened
        opening.cancel()
        account(
            state,
            request,
            left_on(request, route),
            endpoint=endpoint,
            stream=True,
            status=499,
            usage=estimate_usage(body),
            started=started,
        )
        raise
    failure = opening.exception() if opening.done() else None
    if failure is not None:
        if isinstance(failure, ProviderError):
            account(
                state,
                request,
                failed_on(failure, route),
                endpoint=endpoint,
                stream=True,
                status=failure.status,
                usage=Usage(),
                started=started,
            )
        raise failure
    return EventStreamResponse(
        _relay(state, request, route, opening, keepalive, started, body, endpoint)
    )


async def _relay(
    state: AppState,
    request: Request,
    route: Route,
    opening: asyncio.Future[Served[ChatStream]],
    keepalive: float,
    started: float,
    body: dict[str, Any],
    endpoint: str = "chat",
) -> AsyncIterator[bytes]:
    status = 200
    upstream: ChatStream | None = None
    target: Target | None = None  # who served (or failed) the stream
    events_out = 0  # SSE events relayed: the estimate of the output when no usage comes
    try:
        while not opening.done():
            done, _ = await asyncio.wait({opening}, timeout=keepalive)
            if not done:
                yield KEEPALIVE
        try:
            served = opening.result()
        except ApiError as exc:
            status, target = exc.status, exc.target
            yield _error_event(exc)
            return
        upstream, target = served.result, served.target
        events = upstream.events().__aiter__()
        try:
            # Before the first event: keep-alive comments while the provider thinks.
            first: asyncio.Future[bytes] = asyncio.ensure_future(events.__anext__())
            try:
                while True:
                    ready, _ = await asyncio.wait({first}, timeout=keepalive)
                    if ready:
                        break
                    yield KEEPALIVE
                chunk = first.result()
                events_out += chunk.count(b"data: ")
                yield chunk
            finally:
                if not first.done():
                    first.cancel()
            async for event in events:
                events_out += event.count(b"data: ")
                yield event
        except StopAsyncIteration:
            pass
        except ApiError as exc:
            # After content: an SSE error event and no [DONE] (the answer is not complete).
            status = exc.status
            yield _error_event(exc)
            return
        yield DONE
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # the client went away
        raise
    finally:
        if not opening.done():
            opening.cancel()
        usage = Usage()
        if upstream is not None:
            await upstream.aclose()
            usage = upstream.usage
            if not (usage.prompt_tokens or usage.completion_tokens):
                # Opened, so billed, but no usage came (client left, stream cut, provider
                # reports none): record an estimate, flagged as such.
                usage = estimate_usage(body, events_out)
        account(
            state,
            request,
            target or left_on(request, route),
            endpoint=endpoint,
            stream=True,
            status=status,
            usage=usage,
            started=started,
        )
