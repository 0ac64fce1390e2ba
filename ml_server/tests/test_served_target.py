"""The router says who served a call; accounting records that, never a shared Route (issue 12).

``Router.resolve`` caches one immutable ``Route`` per model name, shared by every request for
that name. Before, the router rewrote ``Route.provider``/``Route.model`` on each attempt and
accounting read them afterwards, which is only right while no two requests hold the same Route.
Here two concurrent requests share one resolved Route and fall back differently; each usage row
must name its own serving target. In-process: a scripted provider (a test stand-in, below) for
the timing, the real Router, accounting, request context and metrics.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from ml_server.api.accounting import accounted_call
from ml_server.api.routes.messages import _adapted
from ml_server.context import SCOPE_KEY, RequestContext, current, reset_current, set_current
from ml_server.db.keys import KeyInfo
from ml_server.logging import JsonFormatter
from ml_server.metrics import Metrics
from ml_server.providers.base import ChatResult, ChatStream, Provider, ProviderError, Usage
from ml_server.router import Router, RoutingPolicy
from ml_server.usage import UsageRow


class ScriptedProvider(Provider):
    """A test stand-in: ``script[body["who"]]`` says what a call does: ``("fail", delay)`` or
    ``("ok", delay)`` (``delay`` seconds first; ``"hang"`` waits forever)."""

    def __init__(self, name: str, script: dict[str, tuple[str, float]]) -> None:
        self.name = name
        self.script = script
        self.calls: list[str] = []
        self.called = asyncio.Event()

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        who = str(body["who"])
        self.calls.append(who)
        self.called.set()
        action, delay = self.script[who]
        if action == "hang":
            await asyncio.Event().wait()
        await asyncio.sleep(delay)
        if action == "fail":
            raise ProviderError(502, f"provider {self.name} failed", kind="http_5xx")
        return ChatResult(b'{"ok": true}', Usage(prompt_tokens=3, completion_tokens=2))

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        raise NotImplementedError


class Rows:
    """What accounting writes (the usage writer's ``record``)."""

    def __init__(self) -> None:
        self.rows: list[UsageRow] = []

    def record(self, row: UsageRow) -> None:
        self.rows.append(row)


def _router(providers: dict[str, Provider]) -> Router:
    return Router(
        providers,
        Metrics(),
        aliases={"pair": ["first/m1", "second/m2"]},
        policy=RoutingPolicy(max_retries=0, deadline=10),
    )


async def _request(state: Any, rid: str, key_id: int, call: Any) -> tuple[Any, RequestContext]:
    """One request as the middleware and ``require_key`` set it up (its own task, context and
    scope), then ``accounted_call`` as the chat route makes it."""
    ctx = RequestContext(rid, "127.0.0.1")
    ctx.key = KeyInfo(key_id, f"key-{key_id}")
    set_current(ctx)  # inside this task only
    request: Any = SimpleNamespace(scope={SCOPE_KEY: ctx})
    route = state.router.resolve("pair")
    body = {"who": rid}
    result = await accounted_call(
        state, request, route, call(route, body), endpoint="chat", started=0.0, body=body
    )
    return result, ctx


def _state(router: Router) -> Any:
    return SimpleNamespace(metrics=Metrics(), router=router, usage=Rows())


async def test_two_requests_sharing_a_route_each_record_their_own_target() -> None:
    # r1: first fails after 10 ms, then second answers after 60 ms.
    # r2 (starts at 20 ms, while r1 is on its fallback): first answers after 10 ms.
    first = ScriptedProvider("first", {"r1": ("fail", 0.01), "r2": ("ok", 0.01)})
    second = ScriptedProvider("second", {"r1": ("ok", 0.06)})
    router = _router({"first": first, "second": second})
    assert router.resolve("pair") is router.resolve("pair")  # one shared, immutable Route
    state = _state(router)
    await router.start()
    try:
        r1 = asyncio.ensure_future(_request(state, "r1", 1, router.chat))
        await asyncio.sleep(0.02)
        r2 = asyncio.ensure_future(_request(state, "r2", 2, router.chat))
        (_, ctx1), (_, ctx2) = await asyncio.gather(r1, r2)
    finally:
        await router.close()
    assert first.calls == ["r1", "r2"] and second.calls == ["r1"]
    rows = {r.request_id: r for r in state.usage.rows}
    assert (rows["r1"].provider, rows["r1"].model, rows["r1"].api_key_id) == ("second", "m2", 1)
    assert (rows["r2"].provider, rows["r2"].model, rows["r2"].api_key_id) == ("first", "m1", 2)
    assert ctx1.target is not None and ctx1.target.label == "second/m2"
    assert ctx1.log_fields is not None and ctx1.log_fields["model"] == "second/m2"
    assert ctx2.log_fields is not None and ctx2.log_fields["model"] == "first/m1"
    assert current() is None  # nothing leaked out of the requests' tasks


async def test_a_failed_fallback_records_the_target_tried_last() -> None:
    first = ScriptedProvider("first", {"r3": ("fail", 0)})
    second = ScriptedProvider("second", {"r3": ("fail", 0)})
    router = _router({"first": first, "second": second})
    state = _state(router)
    await router.start()
    try:
        with pytest.raises(ProviderError) as err:
            await asyncio.ensure_future(_request(state, "r3", 1, router.chat))
    finally:
        await router.close()
    assert err.value.target is not None and err.value.target.label == "second/m2"
    [row] = state.usage.rows
    assert (row.provider, row.model, row.status_code) == ("second", "m2", 502)


async def test_a_client_leaving_during_the_fallback_is_recorded_on_the_fallback() -> None:
    """A 499 (the call cancelled) is billed by the provider it was on: the fallback here."""
    first = ScriptedProvider("first", {"r4": ("fail", 0)})
    second = ScriptedProvider("second", {"r4": ("hang", 0)})
    router = _router({"first": first, "second": second})
    state = _state(router)
    await router.start()
    try:
        task = asyncio.ensure_future(_request(state, "r4", 1, router.chat))
        await asyncio.wait_for(second.called.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await router.close()
    [row] = state.usage.rows
    assert (row.provider, row.model, row.status_code) == ("second", "m2", 499)
    assert row.tokens_estimated


async def test_adapted_routes_keep_the_providers_breaker_and_slots() -> None:
    """/v1/messages wraps each target's provider; the wrapped target keeps the provider's own
    concurrency slots (the ones chat uses), not an unlimited set of its own (/v1/responses does
    the same: test_fair_share.py runs both against a real server)."""
    router = Router(
        {"first": ScriptedProvider("first", {}), "second": ScriptedProvider("second", {})},
        Metrics(),
        aliases={"pair": ["first/m1", "second/m2"]},
        policy=RoutingPolicy(provider_concurrency=3),
    )
    try:
        adapted = _adapted(router.resolve("pair"), {}, router.catalog)
        assert [t.label for t in adapted.targets] == ["first/m1", "second/m2"]
        for wrapped in adapted.targets:
            name = wrapped.provider.name
            assert wrapped.slots is router.slots[name] and wrapped.slots.capacity == 3
            assert wrapped.breaker is router.breakers[name]
    finally:
        await router.close()


def test_log_lines_written_while_serving_a_request_name_it() -> None:
    """``ml_server.logging`` reads the request's context: a server log line (e.g. the router's
    "falling back") carries the request id; outside a request it has none."""
    formatter = JsonFormatter()

    def line(**fields: Any) -> dict[str, Any]:
        record = logging.LogRecord("ml_server.router", logging.INFO, __file__, 1, "x", None, None)
        record.fields = fields
        parsed: dict[str, Any] = orjson.loads(formatter.format(record))
        return parsed

    assert "request_id" not in line()
    token = set_current(RequestContext("req-42", "127.0.0.1"))
    try:
        assert line(failed="first/m1")["request_id"] == "req-42"
        assert line(request_id="given")["request_id"] == "given"  # a field given wins
    finally:
        reset_current(token)
    assert "request_id" not in line()
