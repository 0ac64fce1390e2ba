"""Token categories, estimated tokens and cost per usage row, end to end: the official openai SDK
-> the real server -> the fault-injecting fake provider; rows read from the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import openai
import pytest

from ml_server.tests import http
from ml_server.tests.server_proc import ServerProcess

pytestmark = pytest.mark.slow

WORDS = "one two three four five"  # the fake answers "echo: one two three four five": 6 tokens


async def _row(db: asyncpg.Connection, rid: str, deadline_s: float = 15) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
        if row is not None:
            return dict(row)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no usage row for request {rid}")


def _rid() -> str:
    return "acc-" + uuid.uuid4().hex


def _chat(client: openai.OpenAI, model: str, rid: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": WORDS}],
        extra_headers={"X-Request-ID": rid},
        **kw,
    )


async def test_openai_cached_and_reasoning_tokens_are_recorded_and_priced(
    client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    """Reproduction: cached_tokens / reasoning_tokens were discarded; no cost at all."""
    rid = _rid()
    _chat(client, "openai/x-priced-ptok-1000-cached-400-reasoning-2", rid)
    row = await _row(db, rid)
    assert row["prompt_tokens"] == 1000
    assert row["input_tokens"] == 600 and row["cached_input_tokens"] == 400
    assert row["completion_tokens"] == 6
    assert row["reasoning_tokens"] == 2 and row["output_tokens"] == 4
    assert row["tokens_estimated"] is False
    # 600 x $2 + 400 x $0.50 + 6 x $8, per million (the test catalogue's made-up prices)
    assert row["cost_usd"] == Decimal("0.001448")


async def test_reasoning_only_in_total_tokens_is_recorded(
    client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    """Reproduction: Gemini's thinking tokens (only in total_tokens) were not recorded."""
    rid = _rid()
    _chat(client, "gemini/x-thoughts-9", rid)
    row = await _row(db, rid)
    assert row["reasoning_tokens"] == 9
    assert row["output_tokens"] == 6
    assert row["completion_tokens"] == 15


async def test_unknown_model_cost_is_null_and_counted(
    server: ServerProcess, client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    def unpriced() -> float:
        text = http.get(server.url + "/metrics").text
        for line in text.splitlines():
            if line.startswith('mlserver_usage_unpriced_rows_total{provider="xai"}'):
                return float(line.split()[-1])
        return 0.0

    before = unpriced()
    rid = _rid()
    _chat(client, "xai/grok-unknown-model", rid)
    row = await _row(db, rid)
    assert row["prompt_tokens"] > 0 and row["cost_usd"] is None
    assert unpriced() == before + 1


async def test_provider_usage_beyond_int4_is_written(
    client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    """Reproduction: prompt_tokens=3000000000 jammed the writer; 0 of the next rows written."""
    rid = _rid()
    _chat(client, "openai/x-ptok-3000000000", rid)
    after = [_rid() for _ in range(20)]
    for r in after:
        _chat(client, "openai/gpt-4o", r)
    assert (await _row(db, rid))["prompt_tokens"] == 3_000_000_000
    for r in after:
        await _row(db, r)


async def test_stream_without_usage_records_an_estimate(
    client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    """Reproduction: Azure streams (no stream usage) recorded 0 tokens."""
    rid = _rid()
    stream = _chat(client, "openai/x-nousage", rid, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: " + WORDS
    row = await _row(db, rid)
    assert row["tokens_estimated"] is True
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0


async def test_client_disconnect_mid_stream_records_an_estimate(
    server: ServerProcess, api_key: str, db: asyncpg.Connection
) -> None:
    """Reproduction: a client that left mid-stream was recorded with 0 tokens."""
    rid = _rid()
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=20)
    stream = _chat(c, "openai/x-chunkdelay-300", rid, stream=True)
    for i, _chunk in enumerate(stream):
        if i >= 2:
            break
    stream.close()
    row = await _row(db, rid)
    assert row["status_code"] == 499
    assert row["tokens_estimated"] is True
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] >= 2


async def test_usage_report_endpoint_and_cli(
    server: ServerProcess, api_key: str, client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    rid = _rid()
    _chat(client, "openai/x-priced-ptok-1000-cached-400-reasoning-2", rid)
    await _row(db, rid)
    r = http.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    mine = [d for d in data if d["model"] == "openai/x-priced-ptok-1000-cached-400-reasoning-2"]
    assert mine and mine[0]["cached_input_tokens"] >= 400
    assert Decimal(mine[0]["cost_usd"]) >= Decimal("0.001448")
    assert http.get(server.url + "/v1/usage").status_code == 401
    cli = server.cli("usage", "--model", "openai/x-priced-ptok-1000-cached-400-reasoning-2")
    assert cli.returncode == 0, cli.stderr
    assert "x-priced-ptok-1000" in cli.stdout and "0.00" in cli.stdout
