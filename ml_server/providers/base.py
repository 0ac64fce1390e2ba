"""The provider interface the router calls, and the mapping of provider failures to our errors."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ml_server.errors import ApiError


@dataclass
class Usage:
    """The token counts of one call, in the shape every provider hands the router (OpenAI's).

    - ``prompt_tokens``: ALL input tokens, cache reads and cache writes included;
    - ``cached_tokens``: cache reads (``prompt_tokens_details.cached_tokens``; Anthropic
      ``cache_read_input_tokens``);
    - ``cache_write_tokens``: cache writes (``prompt_tokens_details.cache_write_tokens``;
      Anthropic ``cache_creation_input_tokens``);
    - ``completion_tokens``: output tokens as the provider reports them;
    - ``reasoning_tokens``: ``completion_tokens_details.reasoning_tokens`` (part of
      ``completion_tokens``, as OpenAI counts them);
    - ``total_tokens``: as reported; when it exceeds prompt + completion, the difference is
      reasoning output the provider left out of ``completion_tokens`` (Gemini, xAI);
    - ``estimated``: the gateway estimated the counts (no usage reported: client left, stream
      cut, provider reports none).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False

    def categories(self) -> TokenCategories:
        """Split into the billed categories (each token in exactly one)."""
        prompt = max(0, self.prompt_tokens)
        cached = min(max(0, self.cached_tokens), prompt)
        write = min(max(0, self.cache_write_tokens), prompt - cached)
        completion = max(0, self.completion_tokens)
        extra = self.total_tokens - prompt - completion
        if extra > 0:  # reasoning reported only in total_tokens
            reasoning, output = extra, completion
        else:
            reasoning = min(max(0, self.reasoning_tokens), completion)
            output = completion - reasoning
        return TokenCategories(prompt - cached - write, cached, write, output, reasoning)


@dataclass(frozen=True, slots=True)
class TokenCategories:
    input: int  # uncached input
    cached_input: int  # cache reads
    cache_write: int
    output: int  # visible output
    reasoning: int

    @property
    def prompt(self) -> int:
        return self.input + self.cached_input + self.cache_write

    @property
    def completion(self) -> int:
        return self.output + self.reasoning


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def usage_from_openai(u: Any) -> Usage:
    """An OpenAI-shaped ``usage`` object (also DeepSeek's, Gemini's and xAI's variants)."""
    if not isinstance(u, dict):
        return Usage()
    pd = u.get("prompt_tokens_details")
    cd = u.get("completion_tokens_details")
    pd = pd if isinstance(pd, dict) else {}
    cd = cd if isinstance(cd, dict) else {}
    cached = _count(pd.get("cached_tokens")) or _count(u.get("prompt_cache_hit_tokens"))
    return Usage(
        prompt_tokens=_count(u.get("prompt_tokens")),
        completion_tokens=_count(u.get("completion_tokens")),
        cached_tokens=cached,
        cache_write_tokens=_count(pd.get("cache_write_tokens")),
        reasoning_tokens=_count(cd.get("reasoning_tokens")),
        total_tokens=_count(u.get("total_tokens")),
    )


@dataclass
class ChatResult:
    """A complete OpenAI-format JSON response body and its token counts."""

    body: bytes
    usage: Usage = field(default_factory=Usage)


class ChatStream(abc.ABC):
    """An opened upstream stream: iterate for OpenAI-format SSE events (``data: ...\\n\\n``).

    ``usage`` is filled in as the stream goes; the final ``data: [DONE]`` is not yielded (the route
    adds it).
    """

    def __init__(self) -> None:
        self.usage = Usage()

    @abc.abstractmethod
    def events(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the upstream connection."""


class ProviderError(ApiError):
    """A failure of (or refusal by) a provider, answered in OpenAI's error shape."""


def _upstream_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] or "no details"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:1000]
        if isinstance(err, str):
            return err[:1000]
        if isinstance(data.get("message"), str):
            return str(data["message"])[:1000]
    return "no details"


def error_from_upstream(
    provider: str, status: int, body: bytes, headers: Any = None
) -> ProviderError:
    """Map a provider's non-2xx answer to what our client gets.

    400/404/413/422 pass through (the client's request is at fault); 401/403 become 502 (our
    credentials are at fault, not the client's); 429 stays 429 with Retry-After; 5xx becomes 502
    (504 for a provider-side timeout).
    """
    detail = _upstream_message(body)
    retry_after = headers.get("Retry-After") if headers is not None else None
    if status in (401, 403):
        return ProviderError(
            502,
            f"provider {provider} rejected the server's credentials (HTTP {status}): {detail}",
            type="api_error",
            code="provider_auth_failed",
            kind="auth",
        )
    if status == 429:
        return ProviderError(
            429,
            f"provider {provider} is rate limiting: {detail}",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            kind="rate_limited",
            retry_after=retry_after,
        )
    if status in (408, 504):
        return ProviderError(
            504,
            f"provider {provider} timed out (HTTP {status})",
            code="provider_timeout",
            kind="timeout",
        )
    if 400 <= status < 500:
        return ProviderError(
            status if status in (400, 404, 409, 413, 422) else 400,
            f"provider {provider} refused the request (HTTP {status}): {detail}",
            type="invalid_request_error",
            code="provider_bad_request",
            kind="http_4xx",
        )
    return ProviderError(
        502,
        f"provider {provider} failed (HTTP {status}): {detail}",
        code="provider_error",
        kind="http_5xx",
        retry_after=retry_after if status == 503 else None,
    )


class Provider(abc.ABC):
    """One upstream. ``model`` is the provider's own model id (the router strips our prefix)."""

    name: str

    @abc.abstractmethod
    async def chat(self, model: str, body: dict[str, Any]) -> ChatResult: ...

    @abc.abstractmethod
    async def chat_stream(self, model: str, body: dict[str, Any]) -> ChatStream:
        """Open the stream: returns once the provider answered with a success status."""

    async def embeddings(self, model: str, body: dict[str, Any]) -> ChatResult:
        raise ProviderError(
            400,
            f"provider {self.name} does not offer embeddings",
            type="invalid_request_error",
            code="embeddings_not_supported",
            kind="http_4xx",
        )

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Create connection pools (called inside the running event loop)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close connection pools."""


def sse_lines(buffer: bytearray, chunk: bytes) -> list[bytes]:
    """Append ``chunk`` and pop the complete lines (without the newline) from ``buffer``."""
    buffer.extend(chunk)
    lines: list[bytes] = []
    start = 0
    while True:
        nl = buffer.find(b"\n", start)
        if nl < 0:
            break
        line = bytes(buffer[start:nl])
        if line.endswith(b"\r"):
            line = line[:-1]
        lines.append(line)
        start = nl + 1
    del buffer[:start]
    return lines
