"""Golden request/response pairs for the OpenAI chat <-> Anthropic Messages translation.

The OpenAI side follows "Create chat completion" and "The chat completion chunk object"
(platform.openai.com/docs/api-reference/chat); the Anthropic side follows "Messages"
(platform.claude.com/docs/en/api/messages), "Streaming messages" (.../build-with-claude/streaming),
"Extended thinking" (.../build-with-claude/extended-thinking), "Prompt caching"
(.../build-with-claude/prompt-caching), "PDF support" (.../build-with-claude/pdf-support) and
"Structured outputs" (.../build-with-claude/structured-outputs). Each pair is what one side's
reference documents and what the other side's reference requires for the same meaning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from ml_server.errors import ApiError
from ml_server.providers.anthropic import _AnthropicStream, from_anthropic, to_anthropic
from ml_server.providers.base import ChatStream, Usage


def test_request_golden_caching_documents_tools_and_system_in_place() -> None:
    body = {
        "model": "anthropic/claude-x",
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarise"},
                    {
                        "type": "file",
                        "file": {
                            "filename": "a.pdf",
                            "file_data": "data:application/pdf;base64,JVBE",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "S"}],
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "shot", "arguments": "{}"},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": [
                    {"type": "text", "text": "screen"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                ],
            },
            {"role": "developer", "content": "Answer in French from now on."},
            {"role": "user", "content": "Go"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "shot",
                    "description": "Screenshot",
                    "parameters": {"type": "object", "properties": {}},
                    "strict": True,
                },
            }
        ],
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "top_p": 1,
        "service_tier": "auto",
        "safety_identifier": "u-42",
    }
    assert to_anthropic("claude-x", body, 64000) == {
        "model": "claude-x",
        "max_tokens": 64000,  # no max_tokens: the model's max output (OpenAI: up to the limit)
        "system": [{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarise"},
                    {
                        "type": "document",
                        "source": {
                            "type": "base64", "media_type": "application/pdf", "data": "JVBE"
                        },
                        "title": "a.pdf",
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "S"},
                    {"type": "tool_use", "id": "c1", "name": "shot", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "c1",
                        "content": [
                            {"type": "text", "text": "screen"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64", "media_type": "image/jpeg", "data": "/9j/"
                                },
                            },
                        ],
                    },
                    {"type": "text", "text": "<system>\nAnswer in French from now on.\n</system>"},
                    {"type": "text", "text": "Go"},
                ],
            },
        ],
        "temperature": 0.2,  # top_p 1 is the no-op value: not sent
        "metadata": {"user_id": "u-42"},
        "service_tier": "auto",
        "tools": [
            {
                "name": "shot",
                "description": "Screenshot",
                "input_schema": {"type": "object", "properties": {}},
                "strict": True,
            }
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }  # fmt: skip


def test_request_golden_reasoning_and_structured_output() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    body = {
        "messages": [{"role": "user", "content": "Where?"}],
        "max_completion_tokens": 4000,
        "reasoning_effort": "high",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Place", "schema": schema, "strict": True},
        },
    }
    out = to_anthropic("claude-x", body, 64000)
    # budget_tokens must be >= 1024 and < max_tokens: "high" (16384) is cut to fit.
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 3999}
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert out["max_tokens"] == 4000
    adaptive = to_anthropic("claude-y", body, 128000, adaptive_thinking=True)
    assert adaptive["thinking"] == {"type": "adaptive"}
    assert adaptive["output_config"]["effort"] == "high"


def test_request_golden_json_object_is_a_forced_tool() -> None:
    out = to_anthropic(
        "m",
        {"messages": [{"role": "user", "content": "JSON please"}],
         "response_format": {"type": "json_object"}},
        100,
    )  # fmt: skip
    assert out["tool_choice"] == {"type": "tool", "name": "json_object_response"}
    assert out["tools"][0]["input_schema"]["type"] == "object"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"seed": 7}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": 0.1}, "presence_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": 0.5, "top_p": 0.9}, "top_p"),
        ({"tools": "x"}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "c"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"reasoning_effort": "huge"}, "reasoning_effort"),
        ({"reasoning_effort": "low", "max_tokens": 800}, "reasoning_effort"),
        ({"reasoning_effort": "low", "temperature": 0.3}, "temperature"),
        ({"reasoning_effort": "low", "tool_choice": "required", "tools": [
            {"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
        ({"response_format": {"type": "json_object"}, "reasoning_effort": "low"},
         "response_format"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"some_future_parameter": 1}, "some_future_parameter"),
        ({"stream_options": {"include_usage": True, "other": 1}}, "stream_options"),
    ],
)  # fmt: skip
def test_parameters_without_a_faithful_translation_are_a_400_naming_them(
    extra: dict[str, Any], param: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(ApiError) as err:
        to_anthropic("m", body, 64000)
    assert err.value.status == 400
    assert err.value.param == param, err.value.message


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "file", "file": {"file_data": "data:application/zip;base64,UEsD"}},
    ],
)
def test_content_without_an_anthropic_equivalent_is_a_400(part: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as err:
        to_anthropic("m", {"messages": [{"role": "user", "content": [part]}]}, 10)
    assert err.value.status == 400 and "messages[0].content[0]" in err.value.message


def test_no_effect_values_are_accepted() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False,
        "store": False, "modalities": ["text"], "parallel_tool_calls": True, "seed": None,
        "response_format": {"type": "text"}, "reasoning_effort": "none",
    }  # fmt: skip
    out = to_anthropic("m", body, 10)
    assert set(out) == {"model", "messages", "max_tokens"}


def test_response_golden_thinking_tool_use_and_cache_usage() -> None:
    # Anthropic "Extended thinking" response with a tool call, usage from "Prompt caching".
    data = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "Need the weather.", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "EmwK"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 1000,
            "output_tokens": 50,
            "output_tokens_details": {"thinking_tokens": 30},
        },
    }
    out, usage = from_anthropic(data, "claude-x")
    assert out["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Need the weather.",
            "thinking_blocks": [
                {"type": "thinking", "thinking": "Need the weather.", "signature": "EqQB"},
                {"type": "redacted_thinking", "data": "EmwK"},
            ],
            "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
        "finish_reason": "tool_calls",
        "logprobs": None,
    }  # fmt: skip
    assert out["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 50,
        "total_tokens": 1260,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert (usage.prompt_tokens, usage.completion_tokens) == (1210, 50)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("pause_turn", "length"), ("model_context_window_exceeded", "length")],
)
def test_response_stop_reasons_that_mean_unfinished(reason: str, finish: str) -> None:
    data = {"content": [{"type": "text", "text": "…"}], "stop_reason": reason, "usage": {}}
    assert from_anthropic(data, "m")[0]["choices"][0]["finish_reason"] == finish


def test_response_json_object_tool_becomes_content() -> None:
    data = {
        "content": [{"type": "tool_use", "id": "t", "name": "json_object_response",
                     "input": {"a": 1}}],
        "stop_reason": "tool_use",
        "usage": {},
    }  # fmt: skip
    choice = from_anthropic(data, "m")[0]["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '{"a":1}'}
    assert choice["finish_reason"] == "stop"


# --- streams -------------------------------------------------------------------------------------
class _Content:
    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    async def iter_any(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._raw), 37):  # odd chunk sizes: events split across reads
            yield self._raw[i : i + 37]

    def at_eof(self) -> bool:
        return True


class _Resp:
    """The part of aiohttp.ClientResponse the stream reads: recorded SSE bytes."""

    def __init__(self, raw: bytes) -> None:
        self.content = _Content(raw)

    def release(self) -> None: ...

    def close(self) -> None: ...


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + str(e["type"]).encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
        for e in events
    )


async def _collect(raw: bytes, include_usage: bool = True) -> list[dict[str, Any]]:
    stream = _AnthropicStream(_Resp(raw), "claude-x", include_usage=include_usage)  # type: ignore[arg-type]
    out = []
    async for chunk in stream.events():
        for line in chunk.split(b"\n\n"):
            if line.startswith(b"data: "):
                out.append(orjson.loads(line[6:]))
    return out


# Anthropic's "Streaming messages" example with extended thinking, then a tool call.
THINKING_STREAM = _sse(
    {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {
        "input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0,
        "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0,
     "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "thinking_delta", "thinking": "Let me "}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "thinking_delta", "thinking": "check."}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "signature_delta", "signature": "EqQBCgIYAh"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": ' "Oslo"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
     "usage": {"output_tokens": 40, "output_tokens_details": {"thinking_tokens": 12}}},
    {"type": "message_stop"},
)  # fmt: skip


async def test_stream_golden_thinking_signature_and_tool_call() -> None:
    chunks = await _collect(THINKING_STREAM)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me "},
        {"reasoning_content": "check."},
        {"thinking_blocks": [
            {"type": "thinking", "thinking": "Let me check.", "signature": "EqQBCgIYAh"}]},
        {"tool_calls": [{"index": 0, "id": "toolu_9", "type": "function",
                         "function": {"name": "weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]},
        {},
    ]  # fmt: skip
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 105,
        "completion_tokens": 40,
        "total_tokens": 145,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_1"}


async def test_stream_error_event_before_content_raises_before_the_first_chunk() -> None:
    raw = _sse(
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1}}},
        {"type": "ping"},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    stream = _AnthropicStream(_Resp(raw), "m", include_usage=False)  # type: ignore[arg-type]
    events = stream.events().__aiter__()
    with pytest.raises(ApiError) as err:
        await events.__anext__()  # nothing was given to the client: the router can retry
    assert (err.value.status, err.value.kind) == (503, "http_5xx")


async def test_stream_error_event_after_content_raises_after_it() -> None:
    raw = _sse(
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "error", "error": {"type": "api_error", "message": "boom"}},
    )
    stream = _AnthropicStream(_Resp(raw), "m", include_usage=False)  # type: ignore[arg-type]
    got = []
    with pytest.raises(ApiError) as err:
        async for chunk in stream.events():
            got.append(chunk)
    assert b'"Hi"' in b"".join(got) and err.value.status == 502


async def test_stream_cut_before_message_stop_is_an_error() -> None:
    raw = _sse(
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    )
    with pytest.raises(ApiError) as err:
        await _collect(raw)
    assert err.value.kind == "connection"


# --- the other direction: Anthropic Messages -> OpenAI chat (for /v1/messages) ------------------
def test_messages_request_golden_to_openai() -> None:
    from ml_server.providers.messages_translate import to_openai

    body = {
        "model": "x",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Rules", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "See"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBO"}},
                {"type": "document", "source": {"type": "base64",
                                                "media_type": "application/pdf", "data": "JVBE"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "tu1", "name": "f", "input": {"a": 1}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu1", "content": [
                    {"type": "text", "text": "done"}]},
            ]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "thinking": {"type": "enabled", "budget_tokens": 5000},
        "metadata": {"user_id": "u1"},
        "stop_sequences": ["Z"],
    }  # fmt: skip
    assert to_openai("gpt-x", body, "openai") == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Rules"},
            {"role": "user", "content": [
                {"type": "text", "text": "See"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                          "filename": "document.pdf"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "tu1", "type": "function",
                 "function": {"name": "f", "arguments": '{"a":1}'}}]},
            {"role": "tool", "tool_call_id": "tu1", "content": "done"},
        ],
        "max_completion_tokens": 300,
        "stop": ["Z"],
        "user": "u1",
        "tools": [{"type": "function", "function": {
            "name": "f", "description": "", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "reasoning_effort": "medium",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": 3}, "top_k"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"container": "c1"}, "container"),
    ],
)
def test_messages_fields_without_an_openai_equivalent_are_refused(
    extra: dict[str, Any], param: str
) -> None:
    from ml_server.providers.messages_translate import to_openai

    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(ApiError) as err:
        to_openai("m", body, "deepseek")
    assert err.value.param == param


def test_messages_response_golden_from_openai() -> None:
    from ml_server.providers.messages_translate import from_openai

    data = {
        "id": "chatcmpl-1",
        "model": "gpt-x",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Sure.",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 2}'}}]}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 9,
                  "prompt_tokens_details": {"cached_tokens": 32}},
    }  # fmt: skip
    out, usage = from_openai(data, "gpt-x")
    assert out == {
        "id": "msg_chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "gpt-x",
        "content": [
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 2}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 18, "cache_read_input_tokens": 32,
                  "cache_creation_input_tokens": 0, "output_tokens": 9},
    }  # fmt: skip
    assert (usage.prompt_tokens, usage.completion_tokens) == (50, 9)


class _Recorded(ChatStream):
    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        super().__init__()
        self._chunks = chunks

    async def events(self) -> AsyncIterator[bytes]:
        for c in self._chunks:
            if c.get("usage"):
                self.usage = Usage(c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"])
            yield b"data: " + orjson.dumps(c) + b"\n\n"


async def test_messages_stream_golden_from_openai_chunks() -> None:
    from ml_server.providers.messages_translate import _OpenAIToMessagesStream

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    recorded = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}},
    ]  # fmt: skip
    stream = _OpenAIToMessagesStream(_Recorded(recorded), "gpt-x")
    raw = b"".join([c async for c in stream.events()])
    events = [orjson.loads(part.split(b"\ndata: ", 1)[1]) for part in raw.split(b"\n\n") if part]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[4]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f",
                                          "input": {}}  # fmt: skip
    assert events[6]["delta"] == {"type": "input_json_delta", "partial_json": "1}"}
    assert events[8]["delta"]["stop_reason"] == "tool_use"
    assert events[8]["usage"]["input_tokens"] == 7 and events[8]["usage"]["output_tokens"] == 5
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (7, 5)
