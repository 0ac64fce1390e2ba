"""/v1/messages with the official anthropic SDK: native to Anthropic, translated to the
OpenAI-format providers, plain and streamed, with tools; keys, usage rows and fallbacks as for
the chat route."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import asyncpg
import pytest

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import FAKE_KEYS, ServerProcess, provider_env

TOOL: Any = {
    "name": "lookup",
    "description": "Look a word up",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}


@pytest.fixture
def claude(server: ServerProcess, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=20)


async def _row(db: asyncpg.Connection, rid: str) -> asyncpg.Record:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
        if row is not None:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"no usage row for {rid}")


async def test_native_plain_passes_the_body_through(
    claude: anthropic.Anthropic, fake: FakeProvider, db: asyncpg.Connection
) -> None:
    rid = "t-" + uuid.uuid4().hex
    msg = claude.messages.create(
        model="anthropic/claude-haiku-4-5",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello claude"}],
        extra_headers={"X-Request-ID": rid, "anthropic-beta": "some-beta-2026-01-01"},
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "echo: hello claude"
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens == 2
    sent = fake.last("/messages")
    assert sent["body"]["model"] == "claude-haiku-4-5" and sent["body"]["system"] == "Be brief."
    assert sent["headers"]["x-api-key"] == FAKE_KEYS["ANTHROPIC_API_KEY"]  # ours, not the client's
    assert sent["headers"]["anthropic-beta"] == "some-beta-2026-01-01"
    row = await _row(db, rid)
    assert (row["endpoint"], row["provider"], row["model"]) == (
        "messages", "anthropic", "claude-haiku-4-5"
    )  # fmt: skip
    assert (row["prompt_tokens"], row["completion_tokens"], row["status_code"]) == (2, 3, 200)


async def test_native_stream_with_tools(
    claude: anthropic.Anthropic, db: asyncpg.Connection
) -> None:
    rid = "t-" + uuid.uuid4().hex
    with claude.messages.stream(
        model="anthropic/claude-tools",
        max_tokens=64,
        tools=[TOOL],
        messages=[{"role": "user", "content": "look it up"}],
        extra_headers={"X-Request-ID": rid},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "lookup" and use.input == {"q": "x"}
    row = await _row(db, rid)
    assert (row["endpoint"], row["stream"], row["status_code"]) == ("messages", True, 200)
    assert row["completion_tokens"] > 0


def test_native_tool_round_trip_with_thinking(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "weather?"}]
    kwargs: Any = {
        "model": "anthropic/claude-haiku-4-5",
        "max_tokens": 4000,
        "tools": [TOOL],
        "thinking": {"type": "enabled", "budget_tokens": 2000},
    }
    first = claude.messages.create(messages=messages, **kwargs)
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    use = first.content[1]
    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {"role": "user",
         "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}
    )  # fmt: skip
    with claude.messages.stream(messages=messages, **kwargs) as stream:
        final = stream.get_final_message()
    assert final.content[-1].type == "text" and final.content[-1].text == "echo: sunny"


def test_translated_to_openai_plain(claude: anthropic.Anthropic, fake: FakeProvider) -> None:
    msg = claude.messages.create(
        model="openai/gpt-4o-mini",
        max_tokens=50,
        system="Be brief.",
        stop_sequences=["END"],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "hello gpt"}]},
        ],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "echo: hello gpt"
    assert msg.stop_reason == "end_turn" and msg.role == "assistant"
    assert msg.usage.output_tokens == 3
    body = fake.last("/chat/completions")["body"]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hello gpt"},
    ]
    assert body["max_completion_tokens"] == 50 and body["stop"] == ["END"]


def test_translated_to_openai_streamed(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="deepseek/deepseek-chat",
        max_tokens=50,
        messages=[{"role": "user", "content": "stream me please"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream me please"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


def test_translated_tool_round_trip(claude: anthropic.Anthropic, fake: FakeProvider) -> None:
    first = claude.messages.create(
        model="openai/gpt-tools",
        max_tokens=50,
        tools=[TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "x"}],
    )
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "lookup" and use.input == {"q": "x"}
    sent = fake.last("/chat/completions")["body"]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert sent["tools"][0]["function"]["parameters"] == TOOL["input_schema"]
    claude.messages.create(
        model="openai/gpt-4o-mini",
        max_tokens=50,
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "found"},
                {"type": "text", "text": "and?"}]},
        ],
    )  # fmt: skip
    msgs = fake.last("/chat/completions")["body"]["messages"]
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"q":"x"}'}
    assert msgs[2] == {"role": "tool", "tool_call_id": use.id, "content": "found"}
    assert msgs[3] == {"role": "user", "content": "and?"}


def test_untranslatable_field_is_a_400_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(
            model="openai/gpt-4o-mini",
            max_tokens=50,
            extra_body={"top_k": 5},
            messages=[{"role": "user", "content": "x"}],
        )
    assert err.value.body["type"] == "error"  # type: ignore[index]
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'top_k'" in err.value.body["error"]["message"]  # type: ignore[index]


def test_keys_and_models_are_checked(server: ServerProcess, claude: anthropic.Anthropic) -> None:
    wrong = anthropic.Anthropic(base_url=server.url, api_key="hsk-wrong-not-real", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        wrong.messages.create(
            model="anthropic/claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(
            model="nope/model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_overloaded_inside_a_200_stream_is_a_503(claude: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.InternalServerError) as err,
        claude.messages.stream(
            model="anthropic/claude-streamerror-0",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        ) as stream,
    ):
        stream.get_final_message()
    assert err.value.status_code == 503


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    count = claude.messages.count_tokens(
        model="anthropic/claude-haiku-4-5", messages=[{"role": "user", "content": "one two"}]
    )
    assert count.input_tokens == 2
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.count_tokens(
            model="openai/gpt-4o", messages=[{"role": "user", "content": "x"}]
        )


@pytest.fixture(scope="module")
def fallback_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "MODEL_ALIASES": '{"sturdy": ["anthropic/claude-status-503", "openai/gpt-4o-mini"]}',
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


async def test_fallback_from_anthropic_to_openai(
    fallback_server: ServerProcess, db: asyncpg.Connection
) -> None:
    """Both usage rows (plain and streamed) name the fallback that served them."""
    key = fallback_server.cli("keys", "create", "--name", "fallback").stdout.strip()
    client = anthropic.Anthropic(base_url=fallback_server.url, api_key=key, max_retries=0)
    rid = "t-mfb-" + uuid.uuid4().hex[:8]
    msg = client.messages.create(
        model="sturdy", max_tokens=20, messages=[{"role": "user", "content": "still here"}],
        extra_headers={"X-Request-ID": rid},
    )  # fmt: skip
    assert msg.content[0].type == "text" and msg.content[0].text == "echo: still here"
    with client.messages.stream(
        model="sturdy", max_tokens=20, messages=[{"role": "user", "content": "and streamed"}],
        extra_headers={"X-Request-ID": rid + "-s"},
    ) as stream:  # fmt: skip
        assert "".join(stream.text_stream) == "echo: and streamed"
    for request_id in (rid, rid + "-s"):
        row = await _row(db, request_id)
        assert (row["provider"], row["model"], row["status_code"]) == ("openai", "gpt-4o-mini", 200)


def test_retired_model_is_refused_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(
            model="anthropic/claude-sonnet-4-5", max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )  # fmt: skip
    body: Any = err.value.body
    assert body["type"] == "error"
    assert "2026-11-30" in body["error"]["message"]
    assert "anthropic/claude-sonnet-5-5" in body["error"]["message"]


def test_translated_max_tokens_is_capped_to_the_models_max_output(
    claude: anthropic.Anthropic, fake: FakeProvider
) -> None:
    """Claude Code asks for 32000 tokens; gpt-4o gives at most 16384 (catalogue): capped. A
    model whose max output the catalogue does not know (xai/grok-4) gets the value as sent."""
    msg = [{"role": "user", "content": "hi"}]
    claude.messages.create(model="openai/gpt-4o", max_tokens=32000, messages=msg)  # type: ignore[arg-type]
    assert fake.last("/openai/v1/chat/completions")["body"]["max_completion_tokens"] == 16384
    claude.messages.create(model="xai/grok-4", max_tokens=32000, messages=msg)  # type: ignore[arg-type]
    assert fake.last("/xai/v1/chat/completions")["body"]["max_tokens"] == 32000
