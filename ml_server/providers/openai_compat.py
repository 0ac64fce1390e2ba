"""OpenAI-compatible providers: OpenAI, DeepSeek, xAI, Gemini's OpenAI endpoint, Azure AI Inference.

The request is forwarded as JSON bytes over one shared aiohttp session, only ``model`` rewritten;
the response bytes go back untouched (parsed once with orjson to read the token counts).
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson

from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    StreamError,
    Usage,
    usage_from_openai,
)
from ml_server.providers.http import HttpProvider, SseStream, json_of

# With include_usage, OpenAI puts ``"usage": null`` in every chunk but the last: no need to parse.
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')


def _usage(data: Any) -> Usage:
    if isinstance(data, dict):
        return usage_from_openai(data.get("usage"))
    return Usage()


class OpenAICompatProvider(HttpProvider):
    """Args:
    name: our provider prefix (``openai``, ``deepseek``, ...).
    base_url: the URL that ``/chat/completions`` is appended to.
    auth_headers: e.g. ``{"Authorization": "Bearer ..."}`` or ``{"api-key": ...}`` (the key
        ``set_credential`` swaps), plus any other header sent with every request.
    query: query string added to every URL (Azure's ``api-version``).
    stream_usage: whether the provider accepts ``stream_options.include_usage``.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        auth_headers: dict[str, str],
        *,
        timeout: float,
        connect_timeout: float,
        query: str = "",
        stream_usage: bool = True,
    ) -> None:
        bearer = "Authorization" in auth_headers
        header = "Authorization" if bearer else "api-key" if "api-key" in auth_headers else None
        super().__init__(
            name,
            base_url,
            auth_headers,
            credential_header=header,
            credential_prefix="Bearer " if bearer else "",
            timeout=timeout,
            connect_timeout=connect_timeout,
            query=query,
        )
        self._stream_usage = stream_usage

    async def _call(self, path: str, model: str, body: dict[str, Any]) -> ChatResult:
        body["model"] = model
        raw = (await self.post_json(path, body))[2]
        return ChatResult(raw, _usage(json_of(self.name, raw)))

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        return await self._call("/chat/completions", model, body)

    async def embeddings(self, model: str, body: dict[str, Any]) -> ChatResult:
        return await self._call("/embeddings", model, body)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        body["model"] = model
        opts = body.get("stream_options")
        client_wants_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        payload = body
        if self._stream_usage and not client_wants_usage:
            # A copy: the router may send the same body again (retry, fallback).
            payload = {
                **body,
                "stream_options": {
                    **(opts if isinstance(opts, dict) else {}),
                    "include_usage": True,
                },
            }
        resp = await self.open_stream("/chat/completions", payload)
        return _OpenAIStream(self.name, resp, hide_usage_chunk=not client_wants_usage)


class _OpenAIStream(SseStream):
    """The provider's events passed on, those of each upstream read joined into one chunk (one
    write to our client); usage read on the way, the usage-only chunk hidden unless asked for."""

    def __init__(
        self, provider: str, resp: aiohttp.ClientResponse, *, hide_usage_chunk: bool
    ) -> None:
        super().__init__(provider, resp)
        self._hide_usage_chunk = hide_usage_chunk

    def feed(self, lines: list[bytes], out: list[bytes]) -> bool:
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # comments, event names, blank separators
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return True
            if payload.startswith(b'{"error"'):
                try:
                    err = orjson.loads(payload).get("error")
                except (orjson.JSONDecodeError, AttributeError):
                    err = None
                raise StreamError.from_event(self._provider, err)
            if b'"usage"' in payload and not _NULL_USAGE.search(payload):
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                    self.usage = _usage(data)
                    if self._hide_usage_chunk and not data.get("choices"):
                        continue
            out.append(b"data: " + payload + b"\n\n")
        return False

    def finish(self, done: bool) -> tuple[bytes, ...]:
        if not done:  # the body ended without "data: [DONE]": a cut stream, not a whole answer
            raise StreamError.incomplete(self._provider)
        return ()
