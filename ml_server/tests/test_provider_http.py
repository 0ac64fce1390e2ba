"""The providers' HTTP base (ml_server/providers/http.py) against a real aiohttp server on
127.0.0.1: errors mapped, streams released, credentials swapped; and a provider added to a
running router (ml_server/provider_keys.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from ml_server.config import load_settings
from ml_server.metrics import Metrics
from ml_server.provider_keys import ProviderKeyFiles, provider_adder
from ml_server.providers.anthropic import AnthropicProvider
from ml_server.providers.base import ChatResult, ChatStream, ProviderError, StreamError
from ml_server.providers.fake import FakeProvider
from ml_server.providers.http import HttpProvider
from ml_server.providers.openai_compat import OpenAICompatProvider, _OpenAIStream
from ml_server.router import ModelNotFound, Router, build_providers


class Upstream:
    """A real HTTP server on 127.0.0.1 whose answers the tests choose; it records each request's
    headers and the client port it came from (a new port: a new connection)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.release_stream = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append({"headers": dict(request.headers), "port": peer[1] if peer else None})
        body = await request.read()
        model = orjson.loads(body).get("model") if body else None
        what = model if isinstance(model, str) else request.match_info["what"]
        if what == "denied":
            return web.json_response({"error": {"message": "bad key", "type": "auth"}}, status=401)
        if what == "overloaded":
            return web.json_response({"error": {"type": "overloaded_error"}}, status=529)
        if what == "notjson":
            return web.Response(text="<html>oops</html>")
        if what == "hang":
            await self.release_stream.wait()
        if what in ("stream", "stream-cut", "stream-held"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            event = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
            for i in range(0, len(event), 7):  # events split across reads
                await resp.write(event[i : i + 7])
            if what == "stream-held":
                await self.release_stream.wait()
            if what != "stream-cut":
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({"ok": True, "usage": {"prompt_tokens": 2}})

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/{what:.+}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def stop(self) -> None:
        self.release_stream.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    try:
        yield server
    finally:
        await server.stop()


def _openai(url: str, key: str = "sk-test-first", timeout: float = 5.0) -> OpenAICompatProvider:
    return OpenAICompatProvider(
        "openai", url, {"Authorization": f"Bearer {key}"}, timeout=timeout, connect_timeout=2
    )


async def test_upstream_401_is_an_auth_failure_of_ours(upstream: Upstream) -> None:
    provider = _openai(upstream.url)
    try:
        with pytest.raises(ProviderError) as plain:
            await provider.post_json("/denied", {})
        with pytest.raises(ProviderError) as streamed:
            await provider.open_stream("/denied", {})
    finally:
        await provider.close()
    for err in (plain.value, streamed.value):
        assert (err.status, err.kind, err.code) == (502, "auth", "provider_auth_failed")
        assert "bad key" in err.message


async def test_provider_specific_status_mapping(upstream: Upstream) -> None:
    provider = AnthropicProvider(
        "sk-ant-test", upstream.url, version="2023-06-01", default_max_tokens=16,
        timeout=5, connect_timeout=2,
    )  # fmt: skip
    try:
        with pytest.raises(ProviderError) as overloaded:
            await provider.post_json("/overloaded", {})
    finally:
        await provider.close()
    assert (overloaded.value.status, overloaded.value.kind) == (503, "http_5xx")


async def test_transport_failures_and_bad_bodies(upstream: Upstream) -> None:
    slow = _openai(upstream.url, timeout=0.3)
    closed = _openai("http://127.0.0.1:9/v1")  # the discard port: nothing listens
    try:
        with pytest.raises(ProviderError) as timed_out:
            await slow.post_json("/hang", {})
        with pytest.raises(ProviderError) as unreachable:
            await closed.open_stream("/stream", {})
    finally:
        await slow.close()
        await closed.close()
    assert (timed_out.value.status, timed_out.value.kind) == (504, "timeout")
    assert (unreachable.value.status, unreachable.value.kind) == (502, "connection")
    provider = _openai(upstream.url)
    try:
        with pytest.raises(ProviderError) as bad:
            await provider.chat("notjson", {})
    finally:
        await provider.close()
    assert (bad.value.status, bad.value.code) == (502, "provider_bad_response")


async def test_credential_swap_changes_the_next_request(upstream: Upstream) -> None:
    provider = _openai(upstream.url)
    azure = OpenAICompatProvider(
        "azure", upstream.url, {"api-key": "first", "extra-parameters": "drop"},
        timeout=5, connect_timeout=2, query="api-version=1",
    )  # fmt: skip
    try:
        await provider.post_json("/ok", {})
        assert provider.set_credential("sk-test-second")
        await provider.post_json("/ok", {})
        assert azure.set_credential("second")  # before its session exists (lazy)
        await azure.post_json("/ok", {})
    finally:
        await provider.close()
        await azure.close()
    sent = [s["headers"] for s in upstream.seen]
    assert [h.get("Authorization") for h in sent[:2]] == [
        "Bearer sk-test-first",
        "Bearer sk-test-second",
    ]
    assert sent[2]["api-key"] == "second"
    assert sent[2]["extra-parameters"] == "drop"
    assert not FakeProvider().set_credential("x")  # no key to swap


async def test_stream_is_read_whole_and_released_on_aclose(upstream: Upstream) -> None:
    provider = _openai(upstream.url)
    try:
        stream = await provider.chat_stream("stream", {"messages": []})
        events = [e async for e in stream.events()]
        assert b"".join(events) == b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        await stream.aclose()
        assert stream._resp.closed  # type: ignore[attr-defined]
        await provider.post_json("/ok", {})
        # Read to its end, the connection went back to the pool: the next request reused it.
        assert upstream.seen[0]["port"] == upstream.seen[1]["port"]

        cut = await provider.chat_stream("stream-cut", {"messages": []})
        with pytest.raises(StreamError) as incomplete:
            async for _ in cut.events():
                pass
        await cut.aclose()
        assert incomplete.value.code == "stream_incomplete"
    finally:
        await provider.close()


async def test_half_read_stream_is_closed_not_pooled(upstream: Upstream) -> None:
    provider = _openai(upstream.url)
    try:
        stream = await provider.open_stream("/stream-held", {})
        await stream.content.readany()  # the client leaves mid-stream
        wrapped = _OpenAIStream("openai", stream, hide_usage_chunk=True)
        await wrapped.aclose()
        assert stream.closed
        upstream.release_stream.set()
        await provider.post_json("/ok", {})
        # The half-read connection was dropped: the next request came on a new one.
        assert upstream.seen[0]["port"] != upstream.seen[1]["port"]
    finally:
        await provider.close()


class _Keyless(HttpProvider):
    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        raise NotImplementedError

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        raise NotImplementedError


async def test_http_provider_without_a_credential_header_has_none_to_swap() -> None:
    provider = _Keyless(
        "x", "http://127.0.0.1:9/", {}, credential_header=None, timeout=1, connect_timeout=1
    )
    assert not provider.set_credential("sk-test")
    assert str(provider.url("/a")) == "http://127.0.0.1:9/a"
    assert provider.url("/a") is provider.url("/a")  # parsed once


async def test_router_serves_a_provider_added_while_running(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The seam of provider_keys and the router, in process: a key file appears, the watcher
    builds the provider as at start and the router resolves its names and aliases."""
    settings = load_settings(
        secrets_dir=str(tmp_path),
        openai_base_url=upstream.url,
        openai_api_key=None,
        anthropic_api_key="sk-ant-t",
    )
    assert "openai" not in build_providers(settings)
    router = Router(
        build_providers(settings),
        Metrics(),
        aliases={"cheap": ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]},
    )
    await router.start()
    watcher = ProviderKeyFiles(
        tmp_path, router.providers, 3600, add=provider_adder(settings, router.catalog, router)
    )
    try:
        with pytest.raises(ModelNotFound):
            router.resolve("openai/gpt-4o-mini")
        assert [t.provider.name for t in router.resolve("cheap").targets] == ["anthropic"]
        assert await watcher.add_missing() == []
        (tmp_path / "OPENAI_API_KEY").write_text("\n")  # empty: not a key
        assert await watcher.add_missing() == []
        (tmp_path / "OPENAI_API_KEY").write_text("sk-test-later\n")
        (tmp_path / "AZURE_INFERENCE_CREDENTIAL").write_text("az\n")  # no endpoint: not built
        assert await watcher.add_missing() == ["openai"]
        assert "azure" not in router.providers
        assert "openai" in watcher.watched  # rotations reach it from now on
        route = router.resolve("cheap")
        assert [t.provider.name for t in route.targets] == ["openai", "anthropic"]
        assert "openai" in router.circuit_states()
        assert any(m["id"].startswith("openai/") for m in router.list_models())
        served = await router.chat(router.resolve("openai/ok"), {"messages": []})
        assert orjson.loads(served.result.body)["ok"] is True
        assert upstream.seen[-1]["headers"]["Authorization"] == "Bearer sk-test-later"
        with pytest.raises(ValueError, match="already configured"):
            await router.add_provider("openai", _openai(upstream.url))
    finally:
        await router.close()
