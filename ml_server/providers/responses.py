"""The OpenAI Responses API (``POST /v1/responses``): a pass-through to OpenAI.

The body goes to OpenAI's ``/responses`` as it is (only ``model`` rewritten) and the answer's
bytes come back untouched, plain and streamed; usage is read from ``usage`` (plain) or the
``response.completed`` / ``response.incomplete`` / ``response.failed`` event (streamed).
Reference: OpenAI "Responses" (platform.openai.com/docs/api-reference/responses).

Other providers get a 400: the Responses API is stateful (``previous_response_id``, stored
responses and conversations, built-in tools run by OpenAI), and a translation to stateless chat
completions would drop that state silently; use /v1/chat/completions or /v1/messages for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from yarl import URL

from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    Provider,
    ProviderError,
    Usage,
)
from ml_server.providers.http import SseStream, json_of
from ml_server.providers.openai_compat import OpenAICompatProvider

# Providers whose OpenAI-compatible endpoint has /responses.
RESPONSES_PROVIDERS = frozenset({"openai"})
_FINAL_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")


def usage_of_response(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    inp = u.get("input_tokens_details") or {}
    out = u.get("output_tokens_details") or {}
    return Usage(
        prompt_tokens=int(u.get("input_tokens") or 0),
        completion_tokens=int(u.get("output_tokens") or 0),
        cached_tokens=int(inp.get("cached_tokens") or 0) if isinstance(inp, dict) else 0,
        reasoning_tokens=int(out.get("reasoning_tokens") or 0) if isinstance(out, dict) else 0,
        total_tokens=int(u.get("total_tokens") or 0),
    )


def supports_responses(provider: Provider) -> bool:
    return isinstance(provider, OpenAICompatProvider) and provider.name in RESPONSES_PROVIDERS


# Called with the id of each response the provider created (plain: before the answer goes to the
# client; streamed: on the ``response.created`` event), so the route can record its owner.
OnCreated = Callable[[str], Awaitable[None]]


class ResponsesAdapter(Provider):
    """One OpenAI provider seen through /responses (``chat``/``chat_stream`` take Responses
    bodies), so the router's retries, fallbacks and breakers apply."""

    def __init__(self, inner: OpenAICompatProvider, on_created: OnCreated | None = None) -> None:
        self.name = inner.name
        self.inner = inner
        self._on_created = on_created

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        payload = {**body, "model": model, "stream": False}
        raw = (await self.inner.post_json("/responses", payload))[2]
        data = json_of(self.name, raw)
        if isinstance(data, dict) and isinstance(data.get("id"), str) and self._on_created:
            await self._on_created(data["id"])
        return ChatResult(
            raw, usage_of_response(data.get("usage") if isinstance(data, dict) else None)
        )

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        payload = {**body, "model": model, "stream": True}
        resp = await self.inner.open_stream("/responses", payload)
        return _ResponsesStream(self.name, resp, self._on_created)


async def stored_call(
    provider: OpenAICompatProvider,
    method: str,
    response_id: str,
    suffix: str,
    query: list[tuple[str, str]],
) -> tuple[int, bytes]:
    """``method /responses/{response_id}{suffix}`` at the provider, with the client's query.

    Returns the status and body of a 2xx answer. Raises: ProviderError for any other.
    """
    base = provider.url("/responses")  # the provider's parsed URL, its own query included
    url = URL(base).with_path(f"{base.path}/{response_id}{suffix}")
    url = url.with_query([*base.query.items(), *query])
    status, _, raw = await provider.request(method, url)
    return status, raw


class _ResponsesStream(SseStream):
    """OpenAI's Responses events passed on as they come; usage read from the final event.

    An ``error`` event before any output raises (the router may retry); after output it raises
    too and the route ends the stream with its own error event. ``events`` is its own: the
    owner of the ``response.created`` id is recorded (awaited) before that event goes out.
    """

    def __init__(
        self, provider: str, resp: aiohttp.ClientResponse, on_created: OnCreated | None = None
    ) -> None:
        super().__init__(provider, resp)
        self._on_created = on_created

    def feed(self, lines: list[bytes], out: list[bytes]) -> bool:
        for line in lines:
            if line.startswith(b"data:"):
                if self._on_created is not None:
                    self._created(line[5:])
                if b'"error"' in line or any(f in line for f in _FINAL_EVENTS):
                    self._look(line[5:])
            out.append(line + b"\n")
        return False

    def _look(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "error":
            message = str(event.get("message") or "stream error")
            raise ProviderError(
                502, f"provider {self._provider} failed mid-stream: {message}",
                code="provider_error", kind="http_5xx",
            )  # fmt: skip
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("usage"), dict):
            self.usage = usage_of_response(response["usage"])

    def _created(self, data: bytes) -> None:
        """Report the id of the ``response.created`` event (the first one) once, before the
        event goes out."""
        if b'"response.created"' not in data:
            return
        on_created, self._on_created = self._on_created, None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        response = event.get("response") if isinstance(event, dict) else None
        rid = response.get("id") if isinstance(response, dict) else None
        if on_created is not None and isinstance(rid, str):
            self._pending = on_created(rid)
