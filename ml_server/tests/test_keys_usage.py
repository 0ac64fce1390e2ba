"""Keys CLI, usage rows in PostgreSQL, and a database outage during traffic."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator

import asyncpg
import openai
import pytest

from ml_server.tests import http
from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow


async def _wait_rows(db: asyncpg.Connection, request_ids: list[str], want: int) -> int:
    """Poll until ``want`` usage rows with these request ids exist (deadline 30 s)."""
    end = time.monotonic() + 30
    n = 0
    while time.monotonic() < end:
        n = await db.fetchval("SELECT count(*) FROM usage WHERE request_id = ANY($1)", request_ids)
        if n >= want:
            return int(n)
        await asyncio.sleep(0.1)
    return int(n)


def _chat(server: ServerProcess, key: str, model: str = "openai/gpt-4o") -> http.Reply:
    rid = "t-" + uuid.uuid4().hex
    return http.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "count these words"}]},
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid},
        timeout=20,
    )


async def test_keys_cli_create_list_revoke(server: ServerProcess, db: asyncpg.Connection) -> None:
    created = server.cli("keys", "create", "--name", "cli-test")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"hsk-[A-Za-z0-9_-]{43}", key)
    assert "shown only once" in created.stderr
    # Stored hashed: the key itself is nowhere in the table.
    stored = await db.fetch("SELECT key_hash, prefix FROM api_keys WHERE name = 'cli-test'")
    assert len(stored) == 1 and stored[0]["key_hash"] != key and len(stored[0]["key_hash"]) == 64
    assert key not in stored[0]["key_hash"]

    listed = server.cli("keys", "list")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.endswith("cli-test"))
    assert "active" in line and key not in listed.stdout
    key_id = line.split()[0]

    c = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    assert c.models.list().data
    revoked = server.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):
        c.models.list()  # KEY_CACHE_SECONDS=0 in the tests: immediate
    assert "revoked" in server.cli("keys", "list").stdout
    again = server.cli("keys", "revoke", key_id)
    assert again.returncode == 1 and "no active key" in again.stderr


async def test_usage_row_per_request(
    server: ServerProcess, api_key: str, db: asyncpg.Connection, client: openai.OpenAI
) -> None:
    r = _chat(server, api_key)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert await _wait_rows(db, [rid], 1) == 1
    row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = 'pytest'")
    assert row["api_key_id"] == key_id
    assert (row["provider"], row["model"], row["endpoint"]) == ("openai", "gpt-4o", "chat")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 4)
    assert row["status_code"] == 200 and row["latency_ms"] >= 0 and row["stream"] is False

    # Streamed (Anthropic) and failed requests are accounted too.
    rid_stream = "t-" + uuid.uuid4().hex
    stream = client.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "two words"}],
        stream=True,
        extra_headers={"X-Request-ID": rid_stream},
    )
    list(stream)
    rid_fail = "t-" + uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="xai/grok-status-500",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Request-ID": rid_fail},
        )
    assert await _wait_rows(db, [rid_stream, rid_fail], 2) == 2
    s = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid_stream)
    assert (s["provider"], s["stream"], s["prompt_tokens"], s["completion_tokens"]) == (
        "anthropic", True, 2, 3,
    )  # fmt: skip
    f = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid_fail)
    assert (f["provider"], f["status_code"]) == ("xai", 502)


async def test_database_outage_does_not_fail_requests(
    server: ServerProcess, api_key: str, pg: TempPostgres
) -> None:
    assert _chat(server, api_key).status_code == 200  # the key is known (cached) before the outage
    pg.stop()
    try:
        ids = []
        for _ in range(5):
            r = _chat(server, api_key)
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-request-id"])
        ready = http.get(server.url + "/ready")
        assert ready.status_code == 503
        assert "database unreachable" in ready.json()["reason"]
        assert http.get(server.url + "/health").status_code == 200
    finally:
        pg.start()
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await _wait_rows(conn, ids, 5) == 5
    finally:
        await conn.close()
    server.wait("/ready")
    metrics = http.get(server.url + "/metrics").text
    assert re.search(r"^mlserver_usage_write_errors_total [1-9]", metrics, re.M)


@pytest.fixture(scope="module")
def tiny_queue_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    env = {**TEST_SETTINGS, **pg.env(), **provider_env(fake.url), "USAGE_QUEUE_SIZE": "2"}
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


def _metric(server: ServerProcess, name: str) -> float:
    text = http.get(server.url + "/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


async def test_usage_overflow_is_counted(
    tiny_queue_server: ServerProcess, pg: TempPostgres
) -> None:
    srv = tiny_queue_server
    key = srv.cli("keys", "create", "--name", "overflow").stdout.strip()
    assert _chat(srv, key).status_code == 200
    dropped_before = _metric(srv, "mlserver_usage_rows_dropped_total")
    pg.stop()
    try:
        ids = []
        for _ in range(8):
            r = _chat(srv, key)
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        dropped = _metric(srv, "mlserver_usage_rows_dropped_total") - dropped_before
    finally:
        pg.start()
    # At most one batch in the writer's hands plus 2 queued survive; the rest are counted.
    assert dropped >= 8 - 3
    conn = await asyncpg.connect(pg.dsn)
    try:
        kept = 8 - int(dropped)
        assert await _wait_rows(conn, ids, kept) == kept
        await asyncio.sleep(0.5)
        n = await conn.fetchval("SELECT count(*) FROM usage WHERE request_id = ANY($1)", ids)
        assert n == kept
    finally:
        await conn.close()
