"""The provider interface the router calls, and the mapping of provider failures to our errors."""

from __future__ import annotations

import abc
import re
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


# Kinds of in-stream error types (Anthropic's ``event: error`` names, OpenAI's ``type``).
_STREAM_ERROR_KINDS = {
    "overloaded_error": ("http_5xx", 503),
    "api_error": ("http_5xx", 502),
    "server_error": ("http_5xx", 502),
    "rate_limit_error": ("rate_limited", 429),
    "rate_limit_exceeded": ("rate_limited", 429),
    "invalid_request_error": ("http_4xx", 400),
    "authentication_error": ("auth", 502),
    "permission_error": ("auth", 502),
    "billing_error": ("quota", 402),
    "insufficient_quota": ("quota", 402),
}


class StreamError(ProviderError):
    """A provider reported an error INSIDE an opened stream (HTTP 200 already received).

    The provider-neutral hook for streams: a provider's ``ChatStream.events()`` raises it when
    the upstream stream carries an error (Anthropic ``event: error``, an OpenAI-compatible
    ``data: {"error": ...}``, a stream that ends without its terminator). Raised before the
    stream's first content, the router treats it like any provider failure of its ``kind``
    (retry, fallback, breaker); after it, the route sends the client an SSE error event.
    """

    @classmethod
    def from_event(cls, provider: str, error: Any) -> StreamError:
        """From the ``error`` object of an in-stream error event (``{"type", "message"}``)."""
        err = error if isinstance(error, dict) else {}
        etype = str(err.get("type") or err.get("code") or "api_error")
        kind, status = _STREAM_ERROR_KINDS.get(etype, ("http_5xx", 502))
        message = sanitize(str(err.get("message") or "no details"))[:1000]
        return cls(
            status,
            f"provider {provider} failed during the stream ({etype}): {message}",
            type="api_error" if kind != "http_4xx" else "invalid_request_error",
            code=etype,
            kind=kind,
        )

    @classmethod
    def incomplete(cls, provider: str) -> StreamError:
        return cls(
            502,
            f"provider {provider} ended the stream before it was complete (no end marker): "
            "the answer may be cut short",
            code="stream_incomplete",
            kind="connection",
        )


_CONTENT = re.compile(
    rb'"(?:content|refusal|reasoning_content|reasoning|arguments|text)"\s*:\s*"[^"]'
    rb'|"tool_calls"|"finish_reason"\s*:\s*"'
)


def has_content(chunk: bytes) -> bool:
    """Whether OpenAI-format SSE bytes carry content (text, tool call, finish), not only the
    opening role chunk or keep-alive: the router retries a stream until it does."""
    return _CONTENT.search(chunk) is not None


# Anything that looks like a credential or a fragment of one: provider key prefixes (also masked
# ones such as "sk-proj-****abcd"), bearer tokens, and long opaque runs.
_SECRETISH = re.compile(
    r"(?i)\b(?:sk|hsk|xai|pk|rk|key|sess)-[A-Za-z0-9_*.\-]{3,}"
    r"|\bAIza[0-9A-Za-z_\-]{10,}"
    r"|\bBearer\s+\S+"
    r"|(?:api[-_ ]?key|x-api-key|token)[\"']?\s*[:=]\s*[\"']?[^\s\"',}]+"
    r"|\b[A-Za-z0-9_\-]{32,}\b"
)


def sanitize(text: str) -> str:
    """Provider error text with anything that looks like a key (or part of one) redacted."""
    return _SECRETISH.sub("[redacted]", text)


@dataclass(frozen=True, slots=True)
class UpstreamError:
    message: str = "no details"
    type: str | None = None
    code: str | None = None
    param: str | None = None


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return sanitize(str(value))[:200]


def parse_upstream_error(body: bytes) -> UpstreamError:
    """The error of a provider's answer: OpenAI/Anthropic objects, Gemini's list-shaped bodies
    (``[{"error": {...}}]``), plain ``{"message"}`` or text. Sanitized."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return UpstreamError(sanitize(text[:300]) or "no details")
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return UpstreamError()
    err = data.get("error", data)
    if isinstance(err, str):
        return UpstreamError(sanitize(err[:1000]))
    if not isinstance(err, dict):
        return UpstreamError()
    message = err.get("message")
    code = err.get("code")
    etype = err.get("type") or err.get("status")  # Gemini: {"code": 400, "status": "..."}
    return UpstreamError(
        sanitize(str(message))[:1000] if isinstance(message, str) and message else "no details",
        _str(etype),
        _str(code),
        _str(err.get("param")),
    )


_QUOTA_WORDS = ("insufficient_quota", "insufficient balance", "credit balance", "billing", "quota")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-goog-request-id", "apim-request-id")


def error_from_upstream(
    provider: str, status: int, body: bytes, headers: Any = None
) -> ProviderError:
    """Map a provider's non-2xx answer to what our client gets.

    400/404/409/413/422 pass through with the provider's ``type``, ``code`` and ``param`` (the
    client's request is at fault, e.g. ``context_length_exceeded``); 401/403 become 502 (our
    credentials are at fault); 402 and quota or balance errors (whatever their status) become
    502 ``provider_quota_exceeded`` of kind ``quota`` (the provider account's fault: fallback
    and breaker); 429 stays 429 with Retry-After; 5xx becomes 502 (504 for a provider timeout).
    Every message is sanitized and names the provider's request id when it sent one.
    """
    up = parse_upstream_error(body)
    retry_after = headers.get("Retry-After") if headers is not None else None
    request_id = None
    if headers is not None:
        for h in _REQUEST_ID_HEADERS:
            value = headers.get(h)
            if value:
                request_id = re.sub(r"[^A-Za-z0-9_.:\-]", "", str(value))[:100] or None
                break
    detail = up.message
    if up.code and up.code not in detail:
        detail += f" (code {up.code})"
    if request_id:
        detail += f" [provider request id {request_id}]"
    lowered = f"{up.type} {up.code} {up.message}".lower()
    error: ProviderError
    if status == 402 or (status in (400, 403, 429) and any(w in lowered for w in _QUOTA_WORDS)):
        error = ProviderError(
            502,
            f"provider {provider} refused for billing or quota reasons (HTTP {status}): {detail}",
            type="api_error",
            code="provider_quota_exceeded",
            kind="quota",
        )
    elif status in (401, 403):
        error = ProviderError(
            502,
            f"provider {provider} rejected the server's credentials (HTTP {status}): {detail}",
            type="api_error",
            code="provider_auth_failed",
            kind="auth",
        )
    elif status == 429:
        error = ProviderError(
            429,
            f"provider {provider} is rate limiting: {detail}",
            type="rate_limit_error",
            code=up.code or "rate_limit_exceeded",
            kind="rate_limited",
            retry_after=retry_after,
        )
    elif status in (408, 504):
        error = ProviderError(
            504,
            f"provider {provider} timed out (HTTP {status})",
            code="provider_timeout",
            kind="timeout",
        )
    elif 400 <= status < 500:
        error = ProviderError(
            status if status in (400, 404, 409, 413, 422) else 400,
            f"provider {provider} refused the request (HTTP {status}): {detail}",
            type=up.type or "invalid_request_error",
            code=up.code or "provider_bad_request",
            kind="http_4xx",
            param=up.param,
        )
    else:
        error = ProviderError(
            502,
            f"provider {provider} failed (HTTP {status}): {detail}",
            code="provider_error",
            kind="http_5xx",
            retry_after=retry_after if status == 503 else None,
        )
    error.upstream_request_id = request_id
    return error


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

    def set_credential(self, value: str) -> bool:
        """Use a new API key from now on (rotation); False when this provider has none."""
        return False

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


def chunk_event(
    chunk_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
) -> bytes:
    """One OpenAI ``chat.completion.chunk`` SSE event: one choice with ``delta`` (and
    ``finish``), or, with ``usage``, the final chunk of ``stream_options.include_usage`` (no
    choices)."""
    data: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        data["usage"] = usage
    return b"data: " + orjson.dumps(data) + b"\n\n"
