"""OpenAI-compatible providers: OpenAI, DeepSeek, xAI, Gemini's OpenAI endpoint, Azure AI Inference.

The request is forwarded as JSON bytes over one shared aiohttp session, only ``model`` rewritten;
the response bytes go back untouched (parsed once with orjson to read the token counts).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    Provider,
    ProviderError,
    StreamError,
    Usage,
    error_from_upstream,
    sse_lines,
    usage_from_openai,
)
from ml_server.providers.http import make_session, transport_errors

# With include_usage, OpenAI puts ``"usage": null`` in every chunk but the last: no need to parse.
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')


def _usage(data: Any) -> Usage:
    if isinstance(data, dict):
        return usage_from_openai(data.get("usage"))
    return Usage()


class OpenAICompatProvider(Provider):
    """Args:
    name: our provider prefix (``openai``, ``deepseek``, ...).
    base_url: the URL that ``/chat/completions`` is appended to.
    auth_headers: e.g. ``{"Authorization": "Bearer ..."}`` or ``{"api-key": ...}``.
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
        self.name = name
        self._base = base_url.rstrip("/")
        self._auth = auth_headers
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._query = f"?{query}" if query else ""
        self._stream_usage = stream_usage
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def set_credential(self, value: str) -> bool:
        header = "Authorization" if "Authorization" in self._auth else "api-key"
        if header not in self._auth:
            return False
        self._auth[header] = f"Bearer {value}" if header == "Authorization" else value
        if self._session is not None:  # the session's default headers, sent with every request
            self._session.headers[header] = self._auth[header]
        return True

    async def start(self) -> None:
        self._session = make_session(
            self._auth, timeout=self._timeout, connect_timeout=self._connect_timeout
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, path: str) -> URL:
        # Parsed once per path: aiohttp would otherwise parse the string on every request.
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(f"{self._base}{path}{self._query}")
        return url

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        return self._session

    async def _post_json(self, path: str, model: str, body: dict[str, Any]) -> ChatResult:
        body["model"] = model
        with transport_errors(self.name):
            async with self.session.post(self._url(path), data=orjson.dumps(body)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise error_from_upstream(self.name, resp.status, raw, resp.headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(
                502,
                f"provider {self.name} sent a response that is not JSON",
                code="provider_bad_response",
            ) from exc
        return ChatResult(raw, _usage(data))

    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult:
        return await self._post_json("/chat/completions", model, body)

    async def embeddings(self, model: str, body: dict[str, Any]) -> ChatResult:
        return await self._post_json("/embeddings", model, body)

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
        with transport_errors(self.name):
            ctx = self.session.post(self._url("/chat/completions"), data=orjson.dumps(payload))
            resp = await ctx.__aenter__()
            if resp.status >= 400:
                raw = await resp.read()
                resp.release()
                raise error_from_upstream(self.name, resp.status, raw, resp.headers)
        return _OpenAIStream(self.name, resp, hide_usage_chunk=not client_wants_usage)


class _OpenAIStream(ChatStream):
    def __init__(
        self, provider: str, resp: aiohttp.ClientResponse, *, hide_usage_chunk: bool
    ) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp
        self._hide_usage_chunk = hide_usage_chunk

    async def events(self) -> AsyncIterator[bytes]:
        """The events of each upstream read, joined into one chunk (one write to our client)."""
        buffer = bytearray()
        with transport_errors(self._provider):
            async for chunk in self._resp.content.iter_any():
                out: list[bytes] = []
                done = False
                for line in sse_lines(buffer, chunk):
                    if not line.startswith(b"data:"):
                        continue  # comments, event names, blank separators
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    if payload.startswith(b'{"error"'):
                        try:
                            err = orjson.loads(payload).get("error")
                        except (orjson.JSONDecodeError, AttributeError):
                            err = None
                        if out:
                            yield b"".join(out)
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
                if out:
                    yield b"".join(out)
                if done:
                    return
            # The body ended without "data: [DONE]": a cut stream, not a complete answer.
            raise StreamError.incomplete(self._provider)

    async def aclose(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()  # a half-read stream cannot go back to the pool
