"""Anthropic Messages API behind the OpenAI chat format, translated both ways (incl. streaming)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from ml_server.providers.anthropic_translate import (
    JSON_TOOL,
    STOP_REASONS,
    MaxOutput,
    bad,
    from_anthropic,
    stream_error,
    to_anthropic,
    usage_of,
)
from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    ProviderError,
    chunk_event,
)
from ml_server.providers.http import HttpProvider, SseStream, json_of

__all__ = ["AnthropicProvider", "from_anthropic", "to_anthropic"]


def _translate_request(
    model: str,
    body: dict[str, Any],
    max_output: int,
    *,
    adaptive_thinking: bool = False,
    cap: int | None = None,
) -> dict[str, Any]:
    try:
        return to_anthropic(model, body, max_output, adaptive_thinking=adaptive_thinking, cap=cap)
    except ProviderError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise bad(
            f"the request cannot be translated for Anthropic: {type(exc).__name__} {exc}"
        ) from exc


def _truncated() -> ProviderError:
    return ProviderError(
        502,
        "provider anthropic ended the stream before message_stop",
        code="provider_stream_truncated",
        kind="connection",
    )


class AnthropicProvider(HttpProvider):
    """Args:
    default_max_tokens: max_tokens for a model the catalogue does not know
        (ANTHROPIC_DEFAULT_MAX_TOKENS).
    max_output: the catalogue's max output tokens of a model (None: unknown).
    adaptive: whether the catalogue says a model takes ``thinking: adaptive``.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        version: str,
        default_max_tokens: int,
        timeout: float,
        connect_timeout: float,
        max_output: MaxOutput | None = None,
        adaptive: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(
            "anthropic",
            base_url,
            {"x-api-key": api_key, "anthropic-version": version},
            credential_header="x-api-key",
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        self._max_tokens = default_max_tokens
        self._max_output = max_output
        self._adaptive = adaptive

    def upstream_error(self, status: int, body: bytes, headers: Any) -> ProviderError:
        err = super().upstream_error(status, body, headers)
        if status == 529:  # Anthropic's "overloaded"
            err.status, err.kind = 503, "http_5xx"
        return err

    def _payload(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        limit = self._max_output(model) if self._max_output is not None else None
        adaptive = self._adaptive(model) if self._adaptive is not None else False
        return _translate_request(
            model, body, limit or self._max_tokens, adaptive_thinking=adaptive, cap=limit
        )

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        payload = self._payload(model, body)
        payload.pop("stream", None)
        raw = (await self.post_json("/messages", payload))[2]
        out, usage = from_anthropic(json_of(self.name, raw), model)
        return ChatResult(orjson.dumps(out), usage)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        payload = self._payload(model, body)
        payload["stream"] = True
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        resp = await self.open_stream("/messages", payload)
        return _AnthropicStream(resp, model, include_usage=include_usage)

    # --- /v1/messages: native pass-through ------------------------------------------------------
    async def messages(
        self, model: str, body: dict[str, Any], headers: dict[str, str]
    ) -> ChatResult:
        """POST /messages with the client's body (only ``model`` rewritten); bytes back as sent."""
        payload = {**body, "model": model, "stream": False}
        raw = (await self.post_json("/messages", payload, headers))[2]
        data = json_of(self.name, raw)
        return ChatResult(raw, usage_of(data.get("usage") if isinstance(data, dict) else None)[0])

    async def messages_stream(
        self, model: str, body: dict[str, Any], headers: dict[str, str]
    ) -> ChatStream:
        payload = {**body, "model": model, "stream": True}
        return _NativeStream(await self.open_stream("/messages", payload, headers))

    async def count_tokens(
        self, model: str, body: dict[str, Any], headers: dict[str, str]
    ) -> bytes:
        payload = {**body, "model": model}
        return (await self.post_json("/messages/count_tokens", payload, headers))[2]


class _NativeStream(SseStream):
    """Anthropic's own stream, passed on event by event (usage read on the way).

    Events are held back until the first content event, so an ``event: error`` before any
    content (overloaded inside an HTTP 200) is a failed attempt the router can retry; after
    that it raises, and the route ends the stream with an error event.
    """

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        super().__init__("anthropic", resp)
        self._raw_usage: dict[str, Any] = {}
        self._held: list[bytes] = []
        self._started = self._finished = False

    def _look(self, data: bytes) -> bool:
        """Read usage and errors from one event; True for content."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(event, dict):
            return False
        kind = event.get("type")
        if kind == "error":
            raise stream_error("anthropic", event.get("error"))
        u = (event.get("message") or {}).get("usage") if kind == "message_start" else None
        u = u if u is not None else event.get("usage") if kind == "message_delta" else None
        if isinstance(u, dict):
            self._raw_usage.update({k: v for k, v in u.items() if v is not None})
            self.usage = usage_of(self._raw_usage)[0]
        return kind in ("content_block_start", "content_block_delta", "message_delta")

    def feed(self, lines: list[bytes], out: list[bytes]) -> bool:
        held = self._held
        for line in lines:
            if line.startswith(b"data:"):
                try:
                    self._started = self._look(line[5:]) or self._started
                except ProviderError:
                    if self._started:  # after content: what came before still goes out
                        out.extend(held)
                    raise
                self._finished = self._finished or b'"message_stop"' in line
            held.append(line + b"\n")
        if self._started and held:
            out.extend(held)
            held.clear()
        return False

    def finish(self, done: bool) -> tuple[bytes, ...]:
        if not self._finished:
            raise _truncated()
        return (b"".join(self._held),) if self._held else ()


class _AnthropicStream(SseStream):
    """Anthropic stream events -> OpenAI chat.completion.chunk events.

    The role chunk of ``message_start`` is held back until the first content (or the end), so
    an ``event: error`` before any content (e.g. ``overloaded_error`` inside an HTTP 200) raises
    before the first event and the router retries or falls back; after content it raises too,
    and the route ends the stream with an SSE error event (and records the failure).
    """

    def __init__(self, resp: aiohttp.ClientResponse, model: str, *, include_usage: bool) -> None:
        super().__init__("anthropic", resp)
        self._model = model
        self._include_usage = include_usage
        self._id = "chatcmpl-anthropic"
        self._created = int(time.time())
        self._tool_index: dict[int, int] = {}
        self._blocks: dict[int, dict[str, Any]] = {}  # thinking blocks being streamed
        self._json_blocks: set[int] = set()  # the json_object forced tool's blocks
        self._raw_usage: dict[str, Any] = {}
        self._openai_usage: dict[str, Any] = usage_of({})[1]
        self._role_sent = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return chunk_event(self._id, self._created, self._model, delta, finish)

    def _add_usage(self, u: Any) -> None:
        if isinstance(u, dict):
            self._raw_usage.update({k: v for k, v in u.items() if v is not None})
        self.usage, self._openai_usage = usage_of(self._raw_usage)

    def _translate(self, event: dict[str, Any]) -> bytes | None:
        kind = event.get("type")
        index = int(event.get("index", 0) or 0)
        if kind == "message_start":
            msg = event.get("message") or {}
            self._id = f"chatcmpl-{msg.get('id', '')}"
            self._model = msg.get("model", self._model)
            self._add_usage(msg.get("usage"))
            return None  # the role goes out with the first content
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use" and block.get("name") == JSON_TOOL:
                self._json_blocks.add(index)
                return None
            if btype == "tool_use":
                idx = len(self._tool_index)
                self._tool_index[index] = idx
                call = {
                    "index": idx,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            if btype == "thinking":
                self._blocks[index] = {
                    "type": "thinking",
                    "thinking": block.get("thinking", ""),
                    "signature": block.get("signature", ""),
                }
                if block.get("thinking"):
                    return self._chunk({"reasoning_content": block["thinking"]})
                return None
            if btype == "redacted_thinking":
                entry = {"type": "redacted_thinking", "data": block.get("data", "")}
                return self._chunk({"thinking_blocks": [entry]})
            if btype == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return None
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if dtype == "thinking_delta":
                block = self._blocks.setdefault(
                    index, {"type": "thinking", "thinking": "", "signature": ""}
                )
                block["thinking"] += delta.get("thinking", "")
                return self._chunk({"reasoning_content": delta.get("thinking", "")})
            if dtype == "signature_delta":
                block = self._blocks.setdefault(
                    index, {"type": "thinking", "thinking": "", "signature": ""}
                )
                block["signature"] += delta.get("signature", "")
                return None
            if dtype == "input_json_delta":
                if index in self._json_blocks:
                    return self._chunk({"content": delta.get("partial_json", "")})
                idx = self._tool_index.get(index, 0)
                call = {"index": idx, "function": {"arguments": delta.get("partial_json", "")}}
                return self._chunk({"tool_calls": [call]})
            return None
        if kind == "content_block_stop":
            block = self._blocks.pop(index, None)
            if block is not None:  # the whole block, signature included, for the next turn
                return self._chunk({"thinking_blocks": [block]})
            return None
        if kind == "message_delta":
            self._add_usage(event.get("usage"))
            reason = str((event.get("delta") or {}).get("stop_reason") or "")
            if not reason:
                return None
            if reason == "tool_use" and self._json_blocks and not self._tool_index:
                return self._chunk({}, "stop")
            return self._chunk({}, STOP_REASONS.get(reason, "stop"))
        if kind == "error":
            raise stream_error("anthropic", event.get("error"))
        return None  # ping, message_stop

    def feed(self, lines: list[bytes], out: list[bytes]) -> bool:
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("type") == "message_stop":
                return True
            piece = self._translate(event)
            if piece is not None:
                if not self._role_sent:
                    out.append(self._chunk({"role": "assistant", "content": ""}))
                    self._role_sent = True
                out.append(piece)
        return False

    def finish(self, done: bool) -> list[bytes]:
        if not done:
            raise _truncated()
        last = []
        if not self._role_sent:
            last.append(self._chunk({"role": "assistant", "content": ""}))
        if self._include_usage:
            last.append(chunk_event(self._id, self._created, self._model, usage=self._openai_usage))
        return last
