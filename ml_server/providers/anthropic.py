"""Anthropic Messages API behind the OpenAI chat format, translated both ways (incl. streaming)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    Provider,
    ProviderError,
    Usage,
    error_from_upstream,
    sse_lines,
)
from ml_server.providers.http import make_session, transport_errors

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _bad(message: str) -> ProviderError:
    return ProviderError(
        400, message, type="invalid_request_error", code="invalid_value", kind="http_4xx"
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _bad("messages[].content[].image_url.url must be a string")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "image/png"
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image_block(part))
        else:
            raise _bad(f"content part type {kind!r} is not supported for Anthropic models")
    return blocks


def to_anthropic(model: str, body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """OpenAI chat request -> Anthropic Messages request."""
    system_parts: list[str] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for msg in body["messages"]:
        role = msg.get("role")
        if role in ("system", "developer"):
            system_parts.append(_text_of(msg.get("content")))
        elif role == "user":
            add("user", _content_blocks(msg.get("content")))
        elif role == "assistant":
            blocks = _content_blocks(msg.get("content"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function", {})
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError as exc:
                    raise _bad("tool_calls[].function.arguments must be a JSON object") from exc
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": fn.get("name"),
                        "input": args,
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": msg.get("tool_call_id"),
                        "content": _text_of(msg.get("content")),
                    }
                ],
            )
        else:
            raise _bad(f"message role {role!r} is not supported")

    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
    }
    if system_parts:
        out["system"] = "\n\n".join(p for p in system_parts if p)
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object"},
            }
            for t in tools
            if isinstance(t, dict) and t.get("type") == "function"
        ]
    choice = body.get("tool_choice")
    if choice == "auto":
        out["tool_choice"] = {"type": "auto"}
    elif choice == "required":
        out["tool_choice"] = {"type": "any"}
    elif choice == "none":
        out["tool_choice"] = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    return out


def _translate_request(model: str, body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    try:
        return to_anthropic(model, body, default_max_tokens)
    except ProviderError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _bad(
            f"the request cannot be translated for Anthropic: {type(exc).__name__} {exc}"
        ) from exc


def _usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    prompt = sum(
        int(u.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Usage(prompt, int(u.get("output_tokens") or 0))


def from_anthropic(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage]:
    """Anthropic Messages response -> OpenAI chat.completion."""
    text: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = _usage(data.get("usage"))
    return (
        {
            "id": f"chatcmpl-{data.get('id', '')}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model", model),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": STOP_REASONS.get(str(data.get("stop_reason")), "stop"),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        },
        usage,
    )


def _anthropic_error(provider: str, status: int, raw: bytes, headers: Any) -> ProviderError:
    err = error_from_upstream(provider, status, raw, headers)
    if status == 529:  # Anthropic's "overloaded"
        err.status, err.kind = 503, "http_5xx"
    return err


class AnthropicProvider(Provider):
    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        version: str,
        default_max_tokens: int,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.name = "anthropic"
        self._url = base_url.rstrip("/") + "/messages"
        self._headers = {"x-api-key": api_key, "anthropic-version": version}
        self._max_tokens = default_max_tokens
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = make_session(
            self._headers, timeout=self._timeout, connect_timeout=self._connect_timeout
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("provider anthropic used before start()")
        return self._session

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        payload = _translate_request(model, body, self._max_tokens)
        with transport_errors(self.name):
            async with self.session.post(self._url, data=orjson.dumps(payload)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _anthropic_error(self.name, resp.status, raw, resp.headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(
                502,
                "provider anthropic sent a response that is not JSON",
                code="provider_bad_response",
            ) from exc
        out, usage = from_anthropic(data, model)
        return ChatResult(orjson.dumps(out), usage)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        payload = _translate_request(model, body, self._max_tokens)
        payload["stream"] = True
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        with transport_errors(self.name):
            ctx = self.session.post(self._url, data=orjson.dumps(payload))
            resp = await ctx.__aenter__()
            if resp.status >= 400:
                raw = await resp.read()
                resp.release()
                raise _anthropic_error(self.name, resp.status, raw, resp.headers)
        return _AnthropicStream(resp, model, include_usage=include_usage)


class _AnthropicStream(ChatStream):
    """Anthropic stream events -> OpenAI chat.completion.chunk events."""

    def __init__(self, resp: aiohttp.ClientResponse, model: str, *, include_usage: bool) -> None:
        super().__init__()
        self._resp = resp
        self._model = model
        self._include_usage = include_usage
        self._id = "chatcmpl-anthropic"
        self._created = int(time.time())
        self._tool_index: dict[int, int] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                    ],
                }
            )
            + b"\n\n"
        )

    def _translate(self, event: dict[str, Any]) -> bytes | None:
        kind = event.get("type")
        if kind == "message_start":
            msg = event.get("message") or {}
            self._id = f"chatcmpl-{msg.get('id', '')}"
            self._model = msg.get("model", self._model)
            self.usage = _usage(msg.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                idx = len(self._tool_index)
                self._tool_index[int(event.get("index", 0))] = idx
                call = {
                    "index": idx,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return None
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta":
                idx = self._tool_index.get(int(event.get("index", 0)), 0)
                call = {"index": idx, "function": {"arguments": delta.get("partial_json", "")}}
                return self._chunk({"tool_calls": [call]})
            return None
        if kind == "message_delta":
            u = event.get("usage") or {}
            if "output_tokens" in u:
                self.usage.completion_tokens = int(u.get("output_tokens") or 0)
            if u.get("input_tokens"):
                self.usage.prompt_tokens = _usage(u).prompt_tokens
            reason = (event.get("delta") or {}).get("stop_reason")
            return self._chunk({}, STOP_REASONS.get(str(reason), "stop")) if reason else None
        if kind == "error":
            err = event.get("error") or {}
            return (
                b"data: "
                + orjson.dumps(
                    {
                        "error": {
                            "message": f"provider anthropic: {err.get('message', 'stream error')}",
                            "type": err.get("type", "api_error"),
                            "code": "provider_error",
                        }
                    }
                )
                + b"\n\n"
            )
        return None  # ping, content_block_stop, message_stop

    async def events(self) -> AsyncIterator[bytes]:
        buffer = bytearray()
        stopped = False
        with transport_errors("anthropic"):
            async for chunk in self._resp.content.iter_any():
                if stopped:
                    break
                for line in sse_lines(buffer, chunk):
                    if not line.startswith(b"data:"):
                        continue
                    try:
                        event = orjson.loads(line[5:])
                    except orjson.JSONDecodeError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    out = self._translate(event)
                    if out is not None:
                        yield out
                    if event.get("type") == "message_stop":
                        stopped = True
                        break
        if self._include_usage:
            u = self.usage
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": self._model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": u.prompt_tokens,
                            "completion_tokens": u.completion_tokens,
                            "total_tokens": u.prompt_tokens + u.completion_tokens,
                        },
                    }
                )
                + b"\n\n"
            )

    async def aclose(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()
