"""Claude through /v1/chat/completions with the official openai SDK: the translation keeps what
the client asked for (structured output, thinking, caching, tools, documents) or refuses it."""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest

from ml_server.tests.fake_provider import FakeProvider

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class Place(pydantic.BaseModel):
    city: str
    population: int
    tags: list[str]


def test_parse_with_a_pydantic_schema(client: openai.OpenAI, fake: FakeProvider) -> None:
    completion = client.chat.completions.parse(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "Describe Oslo"}],
        response_format=Place,
        max_tokens=200,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Place) and parsed.city == "x" and parsed.population == 1
    sent = fake.last("/messages")["body"]
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["output_config"]["format"]["schema"]["required"] == ["city", "population", "tags"]


def test_json_object_answers_json(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="anthropic/claude-rich",
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_n_above_one_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="anthropic/claude-haiku-4-5",
            messages=[{"role": "user", "content": "hi"}],
            n=2,
        )
    assert err.value.body["param"] == "n"  # type: ignore[index]
    assert "one choice" in err.value.body["message"]  # type: ignore[index]


def test_tool_round_trip_with_thinking(client: openai.OpenAI, fake: FakeProvider) -> None:
    """reasoning_effort turns thinking on; the thinking block, with its signature, goes back on
    the next turn (the API refuses a tool-use turn without it when thinking is on)."""
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=messages,
        tools=[WEATHER_TOOL],
        reasoning_effort="low",
        max_completion_tokens=4000,
    )
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    extra = msg.model_extra or {}
    assert extra["reasoning_content"] == "Thinking about: Weather in Oslo?"
    assert extra["thinking_blocks"][0]["signature"].startswith("sig-")
    assert fake.last("/messages")["body"]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    call = msg.tool_calls[0]  # type: ignore[index]
    messages.append(msg.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = client.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=messages,
        tools=[WEATHER_TOOL],
        reasoning_effort="low",
        max_completion_tokens=4000,
    )
    assert second.choices[0].message.content == "echo: sunny, 21 C"
    assert second.usage is not None and second.usage.completion_tokens_details is not None
    assert (
        second.usage.completion_tokens_details.reasoning_tokens == 5
    )  # "Thinking about: sunny, 21 C"


def test_streamed_tool_round_trip_with_thinking(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    kwargs: Any = {
        "model": "anthropic/claude-haiku-4-5",
        "tools": [WEATHER_TOOL],
        "reasoning_effort": "low",
        "max_completion_tokens": 4000,
        "stream": True,
    }
    reasoning, args = "", ""
    blocks: list[Any] = []
    call_id = name = None
    for chunk in client.chat.completions.create(messages=messages, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        reasoning += extra.get("reasoning_content") or ""
        blocks += extra.get("thinking_blocks") or []
        for tc in delta.tool_calls or []:
            call_id = tc.id or call_id
            name = (tc.function.name if tc.function else None) or name
            args += (tc.function.arguments if tc.function else None) or ""
    assert reasoning == "Thinking about: Weather in Oslo?"
    assert blocks == [
        {"type": "thinking", "thinking": reasoning, "signature": blocks[0]["signature"]}
    ]
    assert name == "weather" and json.loads(args) == {"city": "x"}
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "thinking_blocks": blocks,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call_id, "content": "rain"})
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(messages=messages, **kwargs)
        if c.choices
    )
    assert text == "echo: rain"


def test_cache_control_passes_through_and_cached_tokens_come_back(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    messages: Any = [
        {
            "role": "system",
            "content": [
                {
                    "type": "text",
                    "text": "A long shared preamble for caching",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
        {"role": "user", "content": "question one"},
    ]
    first = client.chat.completions.create(model="anthropic/claude-cache", messages=messages)
    sent = fake.last("/messages")["body"]
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    second = client.chat.completions.create(model="anthropic/claude-cache", messages=messages)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens  # all input, cached or not
    written = first.usage.prompt_tokens_details.cache_write_tokens  # type: ignore[union-attr]
    assert written == first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens  # type: ignore[union-attr]


def test_parallel_tool_calls_false_reaches_anthropic(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    client.chat.completions.create(
        model="anthropic/claude-rich",
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,
    )
    choice = fake.last("/messages")["body"]["tool_choice"]
    assert choice == {"type": "auto", "disable_parallel_tool_use": True}


def test_sampling_outside_anthropic_ranges_is_refused(client: openai.OpenAI) -> None:
    cases: Any = (
        ({"temperature": 1.7}, "temperature"),
        ({"temperature": 0.5, "top_p": 0.8}, "top_p"),
    )
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="anthropic/claude-haiku-4-5",
                messages=[{"role": "user", "content": "hi"}],
                **kwargs,
            )
        assert err.value.body["param"] == param  # type: ignore[index]


def test_wrong_tools_type_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="anthropic/claude-haiku-4-5",
            messages=[{"role": "user", "content": "hi"}],
            tools="x",  # type: ignore[arg-type]
        )
    assert err.value.body["param"] == "tools"  # type: ignore[index]


def test_mid_conversation_system_message_stays_in_place(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    client.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[
            {"role": "system", "content": "S0"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": "From now on, French."},
            {"role": "user", "content": "c"},
        ],
    )
    body = fake.last("/messages")["body"]
    assert body["system"] == "S0"
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system>\nFrom now on, French.\n</system>"},
            {"type": "text", "text": "c"},
        ],
    }


def test_image_in_a_tool_result_and_a_pdf_reach_anthropic(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "read"},
                {
                    "type": "file",
                    "file": {
                        "filename": "r.pdf",
                        "file_data": "data:application/pdf;base64,JVBERi0x",
                    },
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
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
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            ],
        },
    ]
    reply = client.chat.completions.create(model="anthropic/claude-rich", messages=messages)
    assert reply.choices[0].message.content == "echo: screen [image]"
    body = fake.last("/messages")["body"]
    assert body["messages"][0]["content"][1]["type"] == "document"
    result = body["messages"][2]["content"][0]
    assert [b["type"] for b in result["content"]] == ["text", "image"]


def test_pause_turn_is_not_a_normal_stop(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="anthropic/claude-pause", messages=[{"role": "user", "content": "go"}]
    )
    assert reply.choices[0].finish_reason == "length"


def test_stream_error_event_after_content_is_an_error_for_the_client(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model="anthropic/claude-streamerror-2",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    text = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "echo: one"
    assert "overloaded" in str(err.value.message)


def test_stream_error_event_before_content_keeps_its_status(client: openai.OpenAI) -> None:
    """No retries on this server: the overloaded stream is answered as 503, not as a 200."""
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model="anthropic/claude-streamerror-0",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
    assert err.value.status_code == 503


async def test_router_retries_a_stream_that_fails_before_content(fake: FakeProvider) -> None:
    """An overloaded_error event inside an HTTP 200 stream, before any content, is a failed
    attempt: the router tries again (here the same target, whose second answer succeeds)."""
    from ml_server.metrics import Metrics
    from ml_server.providers.anthropic import AnthropicProvider
    from ml_server.router import Router, RoutingPolicy

    provider = AnthropicProvider(
        "sk-test-not-a-real-key",
        fake.url + "/anthropic/v1",
        version="2023-06-01",
        default_max_tokens=100,
        timeout=5,
        connect_timeout=2,
    )
    policy = RoutingPolicy(max_retries=1, backoff_base=0.01, backoff_max=0.01)
    router = Router({"anthropic": provider}, Metrics(), policy=policy)
    await router.start()
    try:
        model = "anthropic/claude-flaky-1-streamerror-0"
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        served = await router.chat_stream(router.resolve(model), body)
        assert served.target.label == model
        stream = served.result
        chunks = [c async for c in stream.events()]
        await stream.aclose()
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in b"".join(chunks).decode().split("\n\n")
            if line.startswith("data: ")
        )
        assert text == "echo: hi"
        assert router.counters.retries.get("anthropic") == 1
    finally:
        await router.close()


def test_missing_max_tokens_is_the_models_max_output(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    """OpenAI's "no max_tokens" means up to the model's limit: the catalogue's max output."""
    client.chat.completions.create(
        model="anthropic/claude-haiku-4-5-20251001",  # a dated snapshot of a catalogue entry
        messages=[{"role": "user", "content": "hi"}],
    )
    assert fake.last("/messages")["body"]["max_tokens"] == 64000


def test_adaptive_models_get_adaptive_thinking_with_an_effort(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    reply = client.chat.completions.create(
        model="anthropic/claude-opus-5-5",
        messages=[{"role": "user", "content": "think"}],
        reasoning_effort="medium",
    )
    body = fake.last("/messages")["body"]
    assert body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "medium"}
    assert body["max_tokens"] == 128000
    assert (reply.choices[0].message.model_extra or {})[
        "reasoning_content"
    ] == "Thinking about: think"


def test_a_non_string_role_is_a_422_not_a_500(server: Any, api_key: str) -> None:
    """Found by schemathesis: ``"role": {}`` raised TypeError (unhashable) in the check."""
    import httpx

    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": "openai/gpt-4o", "messages": [{"role": {}, "content": None}]},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages[0].role"


# --- the catalogue at the API: limits listed, retired models refused, max output capped --------


def test_models_list_shows_limits_and_hides_retired_models(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    gpt = models["openai/gpt-4o"].model_extra or {}
    assert (gpt["context_window"], gpt["max_output_tokens"]) == (128000, 16384)
    assert "max_output_tokens" not in (models["xai/grok-4"].model_extra or {})  # not known
    assert "anthropic/claude-sonnet-5-5" in models
    assert "anthropic/claude-sonnet-4-5" not in models
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("anthropic/claude-sonnet-4-5")
    assert err.value.body["code"] == "model_retired"  # type: ignore[index]


def test_a_retired_model_is_refused_naming_its_date_and_successor(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    fake.clear()
    for model in ("anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5-20250929"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        body: Any = err.value.body
        assert (body["code"], body["param"]) == ("model_retired", "model")
        assert model in body["message"] and "2026-11-30" in body["message"]
        assert "anthropic/claude-sonnet-5-5" in body["message"]
    assert fake.requests == []  # refused before any provider call


def test_max_tokens_above_the_models_max_output_is_capped(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    """max_tokens is an upper bound: a translated request asking for more than the model can
    give is sent with the model's max output (the catalogue's), never refused for it."""
    client.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=1_000_000,
    )
    assert fake.last("/messages")["body"]["max_tokens"] == 64000
    client.chat.completions.create(
        model="anthropic/claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}],
        max_tokens=100,
    )  # fmt: skip
    assert fake.last("/messages")["body"]["max_tokens"] == 100
