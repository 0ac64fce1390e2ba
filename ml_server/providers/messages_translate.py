"""The Anthropic Messages API (``POST /v1/messages``) in front of every provider.

``MessagesAdapter`` wraps one provider so the router's retries, fallbacks and breakers apply as
they do for chat: for Anthropic it is a native pass-through (the body goes as it is, only
``model`` rewritten; the answer's bytes come back untouched); for the OpenAI-format providers
the request is translated to a chat completion and the answer back to an Anthropic message
(plain and streamed). References: Anthropic "Messages" and "Streaming messages"
(platform.claude.com/docs/en/api/messages, .../build-with-claude/streaming), OpenAI "Create chat
completion" (platform.openai.com/docs/api-reference/chat/create).

Request fields without a faithful OpenAI equivalent are a 400 naming them (docs/ml-server.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ml_server.providers.anthropic import AnthropicProvider
from ml_server.providers.anthropic_translate import bad
from ml_server.providers.base import ChatResult, ChatStream, Provider, ProviderError, Usage

FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# thinking.budget_tokens -> reasoning_effort (the inverse of EFFORT_BUDGETS' steps).
_BUDGET_STEPS = ((2048, "low"), (8192, "medium"))

_ACCEPTED = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "stop_sequences",
    "stream", "tools", "tool_choice", "metadata", "thinking", "output_config", "service_tier",
    "cache_control",
})  # fmt: skip


def _refuse(param: str, why: str) -> ProviderError:
    return bad(f"'{param}' is not supported for this model's provider: {why}", param)


def _image_part(source: dict[str, Any], where: str) -> dict[str, Any]:
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise _refuse(f"{where}.source.type", "images are taken as base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        file: dict[str, Any] = {"file_data": f"data:application/pdf;base64,{source.get('data')}"}
        file["filename"] = str(block.get("title") or "document.pdf")
        return {"type": "file", "file": file}
    if source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    raise _refuse(f"{where}.source", "documents are taken as base64 PDF or plain text")


def _user_parts(blocks: list[Any], where: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """(OpenAI tool messages, OpenAI content parts) of one Anthropic user turn."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        at = f"{where}[{i}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(b.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(b.get("source") or {}, at))
        elif kind == "document":
            parts.append(_document_part(b, at))
        elif kind == "tool_result":
            content = b.get("content")
            if isinstance(content, list):
                sub = _user_parts(content, f"{at}.content")[1]
                content = (
                    sub
                    if any(p["type"] != "text" for p in sub)
                    else "".join(p["text"] for p in sub)
                )
            if b.get("is_error"):
                content = f"Error: {content}" if isinstance(content, str) else content
            tools.append(
                {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": content or ""}
            )
        else:
            raise _refuse(f"{at}.type", f"content block {kind!r} has no OpenAI equivalent")
    return tools, parts


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            text.append(str(b.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": orjson.dumps(b.get("input") or {}).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed for Anthropic only; other providers do not take it back
        else:
            raise _refuse(f"{where}[{i}].type", f"content block {kind!r} has no OpenAI equivalent")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def to_openai(
    model: str, body: dict[str, Any], provider: str, cap: int | None = None
) -> dict[str, Any]:
    """Anthropic Messages request -> OpenAI chat request."""
    for key, value in body.items():
        if key not in _ACCEPTED and value is not None:
            raise _refuse(key, "it has no OpenAI chat equivalent")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "\n\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
        messages.append({"role": "system", "content": text})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(raw):
        where = f"messages[{i}].content"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad(f"messages[{i}].role must be 'user' or 'assistant'", f"messages[{i}].role")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise bad(f"{where} must be a string or an array of blocks", where)
        if m["role"] == "assistant":
            messages.append(_assistant(blocks, where))
            continue
        tools, parts = _user_parts(blocks, where)
        messages.extend(tools)
        if parts:
            only_text = all(p["type"] == "text" for p in parts)
            messages.append(
                {"role": "user",
                 "content": "".join(p["text"] for p in parts) if only_text else parts}
            )  # fmt: skip
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad("'max_tokens' is required and must be a positive integer", "max_tokens")
    out: dict[str, Any] = {"model": model, "messages": messages}
    if cap is not None:  # the model's max output (catalogue): max_tokens is an upper bound
        max_tokens = min(max_tokens, cap)
    out["max_completion_tokens" if provider in ("openai", "azure") else "max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        out["user"] = meta["user_id"]
    tool_defs = body.get("tools")
    if tool_defs is not None:
        out["tools"] = []
        for i, t in enumerate(tool_defs if isinstance(tool_defs, list) else [None]):
            if not isinstance(t, dict) or t.get("type") not in (None, "custom"):
                kind = t.get("type") if isinstance(t, dict) else t
                raise _refuse(f"tools[{i}].type", f"server tool {kind!r} runs at Anthropic only")
            fn = {"name": t.get("name"), "description": t.get("description") or "",
                  "parameters": t.get("input_schema") or {"type": "object"}}  # fmt: skip
            if t.get("strict"):
                fn["strict"] = True
            out["tools"].append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif mapped is not None:
            out["tool_choice"] = mapped
        else:
            raise bad("tool_choice.type must be auto, any, tool or none", "tool_choice")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = int(thinking.get("budget_tokens") or 0)
        out["reasoning_effort"] = next((e for b, e in _BUDGET_STEPS if budget <= b), "high")
    config = body.get("output_config")
    if isinstance(config, dict):
        if config.get("effort") is not None:
            out["reasoning_effort"] = config["effort"]
        fmt = config.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": fmt.get("schema"), "strict": True},
            }
    tier = body.get("service_tier")
    if tier is not None:
        out["service_tier"] = "default" if tier == "standard_only" else "auto"
    return out


def _anthropic_usage(u: Any) -> tuple[Usage, dict[str, Any]]:
    u = u if isinstance(u, dict) else {}
    prompt = int(u.get("prompt_tokens") or 0)
    details = u.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    completion = int(u.get("completion_tokens") or 0)
    return Usage(prompt, completion), {
        "input_tokens": prompt - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": completion,
    }


def from_openai(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage]:
    """OpenAI chat.completion -> Anthropic message."""
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_raw_arguments": fn.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"),
                        "input": args})  # fmt: skip
    usage, anthropic_usage = _anthropic_usage(data.get("usage"))
    return {
        "id": f"msg_{data.get('id', '')}",
        "type": "message",
        "role": "assistant",
        "model": data.get("model") or model,
        "content": content,
        "stop_reason": FINISH_TO_STOP.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage,
    }, usage


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class _OpenAIToMessagesStream(ChatStream):
    """OpenAI chat.completion.chunk events -> Anthropic stream events."""

    def __init__(self, inner: ChatStream, model: str) -> None:
        super().__init__()
        self._inner = inner
        self._model = model
        self._index = -1
        self._open: str | None = None  # "text" or "tool:<openai index>"
        self._stop = "end_turn"
        self._usage: dict[str, Any] = _anthropic_usage({})[1]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse_event("content_block_stop", {"index": self._index})]

    def _start(self, key: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._open = key
        out.append(sse_event("content_block_start", {"index": self._index, "content_block": block}))
        return out

    def _chunk(self, data: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if isinstance(data.get("usage"), dict):
            self.usage, self._usage = _anthropic_usage(data["usage"])
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._open != "text":
                    out += self._start("text", {"type": "text", "text": ""})
                out.append(sse_event("content_block_delta", {
                    "index": self._index,
                    "delta": {"type": "text_delta", "text": delta["content"]}}))  # fmt: skip
            for call in delta.get("tool_calls") or []:
                key = f"tool:{call.get('index', 0)}"
                fn = call.get("function") or {}
                if self._open != key:
                    out += self._start(key, {"type": "tool_use", "id": call.get("id"),
                                             "name": fn.get("name"), "input": {}})  # fmt: skip
                if fn.get("arguments"):
                    out.append(sse_event("content_block_delta", {
                        "index": self._index,
                        "delta": {"type": "input_json_delta",
                                  "partial_json": fn["arguments"]}}))  # fmt: skip
            if choice.get("finish_reason"):
                self._stop = FINISH_TO_STOP.get(str(choice["finish_reason"]), "end_turn")
        return out

    async def events(self) -> AsyncIterator[bytes]:
        first = True
        async for raw in self._inner.events():
            out: list[bytes] = []
            if first:
                start: dict[str, Any] = {
                    "id": "msg_gateway", "type": "message", "role": "assistant",
                    "model": self._model, "content": [], "stop_reason": None,
                    "stop_sequence": None, "usage": self._usage,
                }  # fmt: skip
                out.append(sse_event("message_start", {"message": start}))
                first = False
            for line in raw.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    continue
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    out += self._chunk(data)
            if out:
                yield b"".join(out)
        self.usage = self._inner.usage
        out = self._close()
        final_usage = _anthropic_usage(
            {"prompt_tokens": self.usage.prompt_tokens,
             "completion_tokens": self.usage.completion_tokens,
             "prompt_tokens_details": {"cached_tokens": self._usage["cache_read_input_tokens"]}}
        )[1]  # fmt: skip
        out.append(sse_event("message_delta", {
            "delta": {"stop_reason": self._stop, "stop_sequence": None},
            "usage": final_usage}))  # fmt: skip
        out.append(sse_event("message_stop", {}))
        yield b"".join(out)

    async def aclose(self) -> None:
        await self._inner.aclose()


class MessagesAdapter(Provider):
    """One provider seen through the Anthropic Messages format (see the module docstring).

    ``chat``/``chat_stream`` take and give Anthropic Messages bodies, so the router runs them
    like any provider call.
    """

    def __init__(
        self, inner: Provider, headers: dict[str, str], max_output: int | None = None
    ) -> None:
        self.name = inner.name
        self.inner = inner
        self._headers = headers  # anthropic-version / anthropic-beta from the client
        self._cap = max_output  # the model's max output (catalogue) for translated requests

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        if isinstance(self.inner, AnthropicProvider):
            return await self.inner.messages(model, body, self._headers)
        translated = to_openai(model, body, self.inner.name, self._cap)
        translated.pop("stream", None)
        result = await self.inner.chat(model, translated)
        try:
            data = orjson.loads(result.body)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(502, f"provider {self.name} sent a response that is not JSON",
                                code="provider_bad_response") from exc  # fmt: skip
        out, usage = from_openai(data, model)
        return ChatResult(orjson.dumps(out), result.usage or usage)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        if isinstance(self.inner, AnthropicProvider):
            return await self.inner.messages_stream(model, body, self._headers)
        translated = to_openai(model, body, self.inner.name, self._cap)
        translated["stream"] = True
        return _OpenAIToMessagesStream(await self.inner.chat_stream(model, translated), model)
