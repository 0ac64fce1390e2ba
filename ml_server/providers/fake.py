"""The built-in offline provider (``fake/echo``): answers locally, so every endpoint works."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ml_server.providers.base import ChatResult, ChatStream, Provider, Usage

FAKE_MODELS = ("echo", "embed")


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _count(text: str) -> int:
    return max(1, len(text.split()))


class FakeProvider(Provider):
    """Echoes the last user message back; embeddings are deterministic hash vectors."""

    name = "fake"

    def _reply(self, body: dict[str, Any]) -> tuple[str, Usage]:
        text = _last_user_text(body)
        reply = f"echo: {text}"
        prompt = sum(_count(str(m.get("content", ""))) for m in body.get("messages") or [])
        return reply, Usage(prompt, _count(reply))

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        reply, usage = self._reply(body)
        out = {
            "id": f"chatcmpl-fake-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"fake/{model}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        }
        return ChatResult(orjson.dumps(out), usage)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        reply, usage = self._reply(body)
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        return _FakeStream(f"fake/{model}", reply, usage, include_usage)

    async def embeddings(self, model: str, body: dict[str, Any]) -> ChatResult:
        inputs = body["input"]
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        dims = int(body.get("dimensions") or 8)
        data = []
        tokens = 0
        for i, item in enumerate(items):
            text = str(item)
            tokens += _count(text)
            digest = hashlib.sha256(text.encode()).digest()
            vec = [(digest[j % len(digest)] - 128) / 128 for j in range(dims)]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        out = {
            "object": "list",
            "data": data,
            "model": f"fake/{model}",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return ChatResult(orjson.dumps(out), Usage(tokens, 0))


class _FakeStream(ChatStream):
    def __init__(self, model: str, reply: str, usage: Usage, include_usage: bool) -> None:
        super().__init__()
        self._model = model
        self._reply = reply
        self._final_usage = usage
        self._include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": self._model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )
            + b"\n\n"
        )

    async def events(self) -> AsyncIterator[bytes]:
        yield self._chunk({"role": "assistant", "content": ""})
        words = self._reply.split(" ")
        for i, word in enumerate(words):
            yield self._chunk({"content": word if i == 0 else " " + word})
        yield self._chunk({}, "stop")
        self.usage = self._final_usage
        if self._include_usage:
            u = self.usage
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
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
