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
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import FAKE_KEYS, ServerProcess


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


# --- stored responses: GET / DELETE /v1/responses/{id}, input_items, cancel --------------------


@pytest.fixture(scope="module")
def other_client(server: ServerProcess) -> openai.OpenAI:
    """A second key of the same server (key B)."""
    result = server.cli("keys", "create", "--name", "pytest-other")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)


def _upstream_calls(fake: FakeProvider, response_id: str) -> int:
    return sum(1 for r in fake.requests if str(r["path"]).endswith(response_id))


def test_stored_response_is_the_creators_only(
    client: openai.OpenAI, other_client: openai.OpenAI, fake: FakeProvider
) -> None:
    created = client.responses.create(model="openai/gpt-4o", input="keep me")
    # Key B: every operation on A's id is the 404 of an unknown id, and nothing reaches OpenAI.
    before = _upstream_calls(fake, created.id)
    for call in (
        lambda: other_client.responses.retrieve(created.id),
        lambda: other_client.responses.input_items.list(created.id),
        lambda: other_client.responses.cancel(created.id),
        lambda: other_client.responses.delete(created.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["code"] == "response_not_found"  # type: ignore[index]
    assert _upstream_calls(fake, created.id) == before
    # Key A: passed through to OpenAI with the gateway's credential.
    got = client.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == "echo: keep me"
    sent = fake.last("/responses/" + created.id)
    assert sent["method"] == "GET" and sent["path"] == f"/openai/v1/responses/{created.id}"
    assert sent["headers"]["authorization"] == "Bearer " + FAKE_KEYS["OPENAI_API_KEY"]
    items = client.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["keep me"]  # type: ignore[union-attr,index]
    assert client.responses.cancel(created.id).status == "cancelled"
    client.responses.delete(created.id)
    assert fake.last("/responses/" + created.id)["method"] == "DELETE"
    with pytest.raises(openai.NotFoundError):  # forgotten by the gateway too
        client.responses.retrieve(created.id)


def test_a_streamed_response_is_recorded_at_its_first_event(
    client: openai.OpenAI, other_client: openai.OpenAI
) -> None:
    stream = client.responses.create(model="openai/gpt-4o", input="streamed", stream=True)
    ids = [e.response.id for e in stream if e.type == "response.created"]
    assert len(ids) == 1
    assert client.responses.retrieve(ids[0]).output_text == "echo: streamed"
    with pytest.raises(openai.NotFoundError):
        other_client.responses.retrieve(ids[0])


def test_unknown_unstored_and_malformed_ids_are_not_found(client: openai.OpenAI) -> None:
    unstored = client.responses.create(model="openai/gpt-4o", input="forget me", store=False)
    for rid in (unstored.id, "resp_never_made", "x" * 200):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(rid)


def test_a_key_may_continue_only_its_own_responses(
    client: openai.OpenAI, other_client: openai.OpenAI, fake: FakeProvider
) -> None:
    first = client.responses.create(model="openai/gpt-4o", input="my secret context")
    follow = client.responses.create(
        model="openai/gpt-4o", input="go on", previous_response_id=first.id
    )
    assert fake.last("/responses")["body"]["previous_response_id"] == first.id
    assert follow.output_text == "echo: go on"
    fake.clear()
    with pytest.raises(openai.NotFoundError) as err:
        other_client.responses.create(
            model="openai/gpt-4o", input="tell me", previous_response_id=first.id
        )
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="openai/gpt-4o", input="x", conversation="conv_abc")
    assert bad.value.body["param"] == "conversation"  # type: ignore[index]
    assert fake.requests == []  # neither reached OpenAI


async def test_owner_rows_older_than_openais_retention_are_pruned(
    server: ServerProcess, pg: TempPostgres, db: asyncpg.Connection
) -> None:
    from types import SimpleNamespace

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from ml_server.api.routes.responses import PRUNE_EVERY, ResponseOwners

    engine = create_async_engine(pg.url)
    owners = ResponseOwners(SimpleNamespace(sessions=async_sessionmaker(engine)))  # type: ignore[arg-type]
    try:
        old, new = "resp_old_" + uuid.uuid4().hex, "resp_new_" + uuid.uuid4().hex
        await db.execute(
            "INSERT INTO response_owners (response_id, key_id, provider, created_at) "
            "VALUES ($1, 1, 'openai', now() - interval '31 days')",
            old,
        )
        for i in range(PRUNE_EVERY - 1):
            await owners.record(f"{new}_{i}", 7, "openai")
        assert await owners.owner(old) == (1, "openai")  # not yet: every PRUNE_EVERY records
        await owners.record(new, 7, "openai")
        assert await owners.owner(old) is None
        assert await owners.owner(new) == (7, "openai")
        await owners.record(new, 8, "openai")  # an id twice: the first owner stays
        assert await owners.owner(new) == (7, "openai")
        await owners.forget(new)
        assert await owners.owner(new) is None
    finally:
        await engine.dispose()
