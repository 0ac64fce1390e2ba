"""/v1/responses with the official openai SDK: passed through to OpenAI, plain and streamed,
usage recorded; other providers refused with a 400 that says why."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import openai
import pytest

from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.server_proc import FAKE_KEYS


async def _row(db: asyncpg.Connection, rid: str) -> asyncpg.Record:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
        if row is not None:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"no usage row for {rid}")


async def test_plain_pass_through_with_usage(
    client: openai.OpenAI, fake: FakeProvider, db: asyncpg.Connection
) -> None:
    rid = "t-" + uuid.uuid4().hex
    response = client.responses.create(
        model="openai/gpt-4o",
        input="hello responses",
        instructions="Be brief.",
        extra_headers={"X-Request-ID": rid},
    )
    assert response.output_text == "echo: hello responses"
    sent = fake.last("/responses")
    assert sent["path"] == "/openai/v1/responses"
    assert sent["body"]["model"] == "gpt-4o" and sent["body"]["instructions"] == "Be brief."
    assert sent["headers"]["authorization"] == "Bearer " + FAKE_KEYS["OPENAI_API_KEY"]
    row = await _row(db, rid)
    assert (row["endpoint"], row["provider"], row["model"], row["stream"]) == (
        "responses", "openai", "gpt-4o", False
    )  # fmt: skip
    assert (row["prompt_tokens"], row["completion_tokens"], row["status_code"]) == (2, 3, 200)


async def test_streamed_pass_through_with_usage(
    client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    rid = "t-" + uuid.uuid4().hex
    stream = client.responses.create(
        model="cheap",  # alias -> openai/gpt-4o-mini
        input=[{"role": "user", "content": "stream this one"}],
        stream=True,
        extra_headers={"X-Request-ID": rid},
    )
    text, kinds = "", []
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == "echo: stream this one"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    row = await _row(db, rid)
    assert (row["endpoint"], row["stream"], row["status_code"]) == ("responses", True, 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 4)


def test_other_providers_are_refused_with_the_reason(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="anthropic/claude-haiku-4-5", input="hi")
    body = err.value.body
    assert body["param"] == "model"  # type: ignore[index]
    assert "/v1/messages" in body["message"] and "anthropic" in body["message"]  # type: ignore[index]


def test_provider_errors_keep_their_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="openai/gpt-ratelimit-7", input="hi")
