"""Per-request usage row and token metrics, shared by the chat and embeddings routes."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import UTC, datetime

from fastapi import Request

from ml_server.providers.base import ChatResult, ProviderError, Usage
from ml_server.router import Route
from ml_server.state import AppState
from ml_server.usage import UsageRow


def account(
    state: AppState,
    request: Request,
    route: Route,
    *,
    endpoint: str,
    stream: bool,
    status: int,
    usage: Usage,
    started: float,
) -> None:
    latency_ms = int((time.perf_counter() - started) * 1000)
    scope_state = request.scope["state"]
    scope_state["log_fields"] = {
        "model": route.label,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "stream": stream,
    }
    name = route.provider.name
    if usage.prompt_tokens:
        state.metrics.count_tokens(name, "prompt", usage.prompt_tokens)
    if usage.completion_tokens:
        state.metrics.count_tokens(name, "completion", usage.completion_tokens)
    state.usage.record(
        UsageRow(
            created_at=datetime.now(UTC),
            request_id=scope_state.get("request_id", ""),
            api_key_id=scope_state.get("api_key_id"),
            endpoint=endpoint,
            provider=name,
            model=route.model[:200],
            stream=stream,
            status_code=status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=latency_ms,
        )
    )


async def accounted_call(
    state: AppState,
    request: Request,
    route: Route,
    call: Awaitable[ChatResult],
    *,
    endpoint: str,
    started: float,
) -> ChatResult:
    """Await a non-streamed provider call and record its usage row, failed or not."""
    try:
        result = await call
    except ProviderError as exc:
        account(
            state,
            request,
            route,
            endpoint=endpoint,
            stream=False,
            status=exc.status,
            usage=Usage(),
            started=started,
        )
        raise
    account(
        state,
        request,
        route,
        endpoint=endpoint,
        stream=False,
        status=200,
        usage=result.usage,
        started=started,
    )
    return result
