"""The built-in offline provider (``fake/echo``): answers locally, so every endpoint works."""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    Provider,
    Usage,
    chunk_event,
)

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


_WORD = re.compile(r"[a-z0-9]+")
# Words too common to say what a text is about.
_STOPWORD_TEXT = (
    "a an and are as at be but by do does for from had has have how i in is it its me my of "
    "on or our so that the their them they this to was we were what when where which who why "
    "will with you your"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _bag_of_words(text: str, dims: int) -> list[float]:
    """A stand-in for a real embedding: each word (lowercased, stopwords dropped, a plural "s"
    cut) hashed to one signed bucket, the sum L2-normalized. Texts that share words come out
    close in cosine terms; synonyms do not (no model behind it). Deterministic."""
    vec = [0.0] * dims
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        digest = hashlib.sha256(word.encode()).digest()
        vec[int.from_bytes(digest[:4], "big") % dims] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0:
        digest = hashlib.sha256(text.encode()).digest()  # no words: a fixed vector per text
        vec = [(digest[j % len(digest)] - 128) / 128 for j in range(dims)]
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


class FakeProvider(Provider):
    """Echoes the last user message back; embeddings are deterministic bag-of-words hash vectors."""

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
            data.append({"object": "embedding", "index": i, "embedding": _bag_of_words(text, dims)})
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
        return chunk_event("chatcmpl-fake", int(time.time()), self._model, delta, finish)

    async def events(self) -> AsyncIterator[bytes]:
        yield self._chunk({"role": "assistant", "content": ""})
        words = self._reply.split(" ")
        for i, word in enumerate(words):
            yield self._chunk({"content": word if i == 0 else " " + word})
        yield self._chunk({}, "stop")
        self.usage = u = self._final_usage
        if self._include_usage:
            yield chunk_event(
                "chatcmpl-fake",
                int(time.time()),
                self._model,
                usage={
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "total_tokens": u.prompt_tokens + u.completion_tokens,
                },
            )
