"""Per-request usage row and token metrics, shared by the routes that call providers.

The provider and model recorded are the target the router says served the call (``Served``),
or tried last (``ApiError.target``), never the route's first choice by default.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from fastapi import Request

from ml_server.context import context_of
from ml_server.providers.base import ChatResult, ProviderError, Usage
from ml_server.router import Route, Served, Target
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


def left_on(request: Request, route: Route) -> Target:
    """The target a call of ``route`` was on when its client left (the router notes it on the
    request's context; the first choice if the call had not started)."""
    noted = context_of(request.scope).target
    for target in route.targets:
        if target is noted:
            return target
    return route.targets[0]


def failed_on(exc: ProviderError, route: Route) -> Target:
    """The target the router tried last for a failed call of ``route``."""
    return exc.target if exc.target is not None else route.targets[0]


def account(
    state: AppState,
    request: Request,
    target: Target,
    *,
    endpoint: str,
    stream: bool,
    status: int,
    usage: Usage,
    started: float,
) -> None:
    """Record one provider call's usage row and token metrics under ``target`` (the one that
    served it, or was tried last), and name it in the request's access log line."""
    latency_ms = int((time.perf_counter() - started) * 1000)
    ctx = context_of(request.scope)
    cats = usage.categories()
    prompt, completion = cats.prompt, cats.completion
    name = target.provider.name
    model = target.model
    ctx.target = target
    ctx.log_fields = {
        "model": f"{name}/{model}",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "stream": stream,
    }
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
    entry = state.router.catalog.lookup(name, model)
    if entry is not None and entry.price is not None:
        cost = entry.price.cost(
            input=cats.input,
            cached_input=cats.cached_input,
            cache_write=cats.cache_write,
            output=cats.completion,
        )
    if cost is None and (prompt or completion):
        metrics.count_unpriced(name)
    state.usage.record(
        UsageRow(
            created_at=datetime.now(UTC),
            request_id=ctx.request_id,
            api_key_id=ctx.key_id,
            endpoint=endpoint,
            provider=name,
            model=model[:200],
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
    call: Awaitable[Served[ChatResult]],
    *,
    endpoint: str,
    started: float,
    body: dict[str, Any] | None = None,
) -> ChatResult:
    """Await a non-streamed router call of ``route`` and record its usage row under the target
    that served it, failed or not (a client that left cancels the call: 499 with the prompt
    estimated, as the provider bills it)."""
    try:
        served = await call
    except asyncio.CancelledError:
        account(
            state,
            request,
            left_on(request, route),
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
            failed_on(exc, route),
            endpoint=endpoint,
            stream=False,
            status=exc.status,
            usage=Usage(),
            started=started,
        )
        raise
    result = served.result
    account(
        state,
        request,
        served.target,
        endpoint=endpoint,
        stream=False,
        status=200,
        usage=result.usage,
        started=started,
    )
    return result
