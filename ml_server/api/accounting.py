"""Per-request usage row and token metrics, shared by the chat and embeddings routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from fastapi import Request

from ml_server.providers.base import ChatResult, ProviderError, Usage
from ml_server.router import Route
from ml_server.state import AppState
from ml_server.usage import UsageRow


def estimate_usage(body: dict[str, Any] | None, output_events: int = 0) -> Usage:
    """A rough count for a call the provider billed but reported no usage for (client left,
    stream cut, provider sends none): about 4 bytes of the request's messages per input token
    and one token per streamed event. Recorded with ``tokens_estimated``."""
    prompt = 0
    if body:
        try:
            prompt = max(1, len(orjson.dumps(body.get("messages") or body.get("input"))) // 4)
        except TypeError:
            prompt = 0
    return Usage(prompt_tokens=prompt, completion_tokens=max(0, output_events), estimated=True)


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
    cats = usage.categories()
    prompt, completion = cats.prompt, cats.completion
    scope_state["log_fields"] = {
        "model": route.label,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "stream": stream,
    }
    name = route.provider.name
    metrics = state.metrics
    if prompt:
        metrics.count_tokens(name, "prompt", prompt)
    if completion:
        metrics.count_tokens(name, "completion", completion)
    if cats.cached_input:
        metrics.count_tokens(name, "cached_input", cats.cached_input)
    if cats.cache_write:
        metrics.count_tokens(name, "cache_write", cats.cache_write)
    if cats.reasoning:
        metrics.count_tokens(name, "reasoning", cats.reasoning)
    cost: Decimal | None = None
    entry = state.router.catalog.lookup(name, route.model)
    if entry is not None and entry.price is not None:
        cost = entry.price.cost(
            input=cats.input,
            cached_input=cats.cached_input,
            cache_write=cats.cache_write,
            output=cats.completion,
        )
    if cost is None and (prompt or completion):
        metrics.usage_unpriced_rows.labels(name).inc()
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
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency_ms,
            input_tokens=cats.input,
            cached_input_tokens=cats.cached_input,
            cache_write_tokens=cats.cache_write,
            output_tokens=cats.output,
            reasoning_tokens=cats.reasoning,
            tokens_estimated=usage.estimated,
            cost_usd=cost,
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
    body: dict[str, Any] | None = None,
) -> ChatResult:
    """Await a non-streamed provider call and record its usage row, failed or not (a client
    that left cancels the call: 499 with the prompt estimated, as the provider bills it)."""
    try:
        result = await call
    except asyncio.CancelledError:
        account(
            state,
            request,
            route,
            endpoint=endpoint,
            stream=False,
            status=499,
            usage=estimate_usage(body),
            started=started,
        )
        raise
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
