"""OpenAI <-> Anthropic translation on its own; the fake provider checked by the anthropic SDK."""

from __future__ import annotations

import anthropic
import pytest

from ml_server.errors import ApiError
from ml_server.providers.anthropic import from_anthropic, to_anthropic
from ml_server.tests.fake_provider import FakeProvider


def test_request_translation_roles_tools_and_images() -> None:
    body = {
        "model": "ignored",
        "messages": [
            {"role": "system", "content": "S1"},
            {"role": "developer", "content": [{"type": "text", "text": "S2"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "result"},
            {"role": "user", "content": "and?"},
        ],
        "max_completion_tokens": 99,
        "temperature": 0.5,
        "stop": "X",
        "user": "u-1",
        "tool_choice": {"type": "function", "function": {"name": "f"}},
    }
    out = to_anthropic("claude-x", body, 4096)
    assert out["system"] == "S1\n\nS2"
    assert out["max_tokens"] == 99 and out["temperature"] == 0.5
    assert out["stop_sequences"] == ["X"] and out["metadata"] == {"user_id": "u-1"}
    assert out["tool_choice"] == {"type": "tool", "name": "f"}
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]  # tool result and next user turn merged
    image = out["messages"][0]["content"][1]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_9", "name": "f", "input": {"a": 1}}
    ]
    assert out["messages"][2]["content"][0] == {
        "type": "tool_result", "tool_use_id": "call_9", "content": "result",
    }  # fmt: skip


def test_unsupported_content_is_a_400() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
    with pytest.raises(ApiError) as err:
        to_anthropic("m", body, 10)
    assert err.value.status == 400


def test_malformed_tools_are_a_400_not_a_500() -> None:
    from ml_server.providers.anthropic import _translate_request

    body = {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}
    with pytest.raises(ApiError) as err:
        _translate_request("m", body, 10)
    assert err.value.status == 400 and "tools[0].function.name" in err.value.message


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("stop_sequence", "stop"), ("refusal", "content_filter")],
)  # fmt: skip
def test_response_translation_stop_reasons_and_usage(reason: str, finish: str) -> None:
    data = {
        "id": "msg_1",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": reason,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 7},
    }
    out, usage = from_anthropic(data, "claude-x")
    assert out["choices"][0]["finish_reason"] == finish
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert out["usage"] == {
        "prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
    }  # fmt: skip
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 7)


def test_fake_anthropic_endpoint_satisfies_the_official_sdk(fake: FakeProvider) -> None:
    """The fake speaks the real wire format: the anthropic SDK parses it, plain and streamed."""
    client = anthropic.Anthropic(
        base_url=fake.url + "/anthropic", api_key="sk-test-not-a-real-key", max_retries=0
    )
    msg = client.messages.create(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hey there"}]
    )
    assert msg.content[0].text == "echo: hey there"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    with client.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hey"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: hey" and final.usage.output_tokens == 2
    assert fake.last("/messages")["path"] == "/anthropic/v1/messages"
