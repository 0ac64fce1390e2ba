"""Malformed input, clients that leave, junk keys, Azure parameters: each a 4xx or a quiet 499,
never a 500, a traceback or a database query."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ml_server.db.engine import make_engine, make_sessionmaker
from ml_server.db.keys import NEGATIVE_CACHE_SIZE, KeyVerifier, create_key
from ml_server.db.migrate import upgrade_to_head_async
from ml_server.tests import http
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess

pytestmark = pytest.mark.slow


def _post(server: ServerProcess, key: str, body: Any) -> http.Reply:
    return http.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": []}], "messages[0].role"),
        ([{"role": {"a": 1}}], "messages[0].role"),
        ([{"role": "user", "content": {"text": "x"}}], "messages[0].content"),
        ([{"role": "user", "content": [1, 2]}], "messages[0].content"),
    ],
)
def test_bad_message_shapes_are_422_not_500(
    server: ServerProcess, api_key: str, messages: Any, param: str
) -> None:
    """Reproduction: {"messages":[{"role":[]}]} answered 500."""
    r = _post(server, api_key, {"model": "openai/gpt-4o", "messages": messages})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def _metric(server: ServerProcess, prefix: str) -> float:
    for line in http.get(server.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_client_leaving_during_a_slow_body_is_a_quiet_499(
    server: ServerProcess, api_key: str
) -> None:
    """Reproduction: a traceback in the log and a 500 in the metrics."""
    label = 'mlserver_requests_total{method="POST",route="/v1/chat/completions",status="499"}'
    before = _metric(server, label)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api_key}\r\n".encode()
            + b'Content-Length: 1000\r\n\r\n{"model": '
        )
        time.sleep(0.3)
    end = time.monotonic() + 5
    while _metric(server, label) < before + 1 and time.monotonic() < end:
        time.sleep(0.1)
    assert _metric(server, label) == before + 1
    assert "unhandled error" not in server.log()
    assert "ClientDisconnect" not in server.log()


async def test_non_streamed_client_leaving_cancels_the_upstream_call(
    server: ServerProcess, api_key: str, db: asyncpg.Connection
) -> None:
    """Reproduction: the upstream call kept running (and billing) after the client left."""
    rid = "gone-" + uuid.uuid4().hex
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(
            model="openai/x-slow-3000",
            messages=[{"role": "user", "content": "hello there"}],
            extra_headers={"X-Request-ID": rid},
        )
    row = None
    end = time.monotonic() + 10
    while row is None and time.monotonic() < end:
        row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
        await asyncio.sleep(0.1)
    assert row is not None
    assert row["status_code"] == 499
    assert row["latency_ms"] < 2500  # cancelled when the client left, not after the 3 s answer
    assert row["tokens_estimated"] is True and row["prompt_tokens"] > 0


def test_azure_gets_extra_parameters_drop(
    server: ServerProcess, api_key: str, fake: FakeProvider, client: openai.OpenAI
) -> None:
    """Reproduction: Azure rejects OpenAI-only parameters: no extra-parameters header."""
    client.chat.completions.create(
        model="azure/Phi-4", messages=[{"role": "user", "content": "x"}], parallel_tool_calls=False
    )
    sent = fake.last("/azure/models/chat/completions")
    assert sent["headers"]["extra-parameters"] == "drop"


async def test_azure_stream_records_its_usage(
    server: ServerProcess, fake: FakeProvider, client: openai.OpenAI, db: asyncpg.Connection
) -> None:
    """Reproduction: Azure streams recorded no usage (0 tokens, later an estimate): the gateway
    did not ask Azure for the usage chunk. The fake provider in Azure mode refuses parameters
    outside Azure's schema unless extra-parameters is set, and honours include_usage."""
    rid = "azure-stream-" + uuid.uuid4().hex
    stream = client.chat.completions.create(
        model="azure/Phi-4",
        messages=[{"role": "user", "content": "three little words"}],
        stream=True,
        extra_headers={"X-Request-ID": rid},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # the client did not ask for the usage chunk
    sent = fake.last("/azure/models/chat/completions")
    assert sent["query"].get("api-version")
    row = None
    end = time.monotonic() + 10
    while row is None and time.monotonic() < end:
        row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
        await asyncio.sleep(0.1)
    assert row is not None
    assert row["provider"] == "azure" and row["status_code"] == 200
    assert row["tokens_estimated"] is False
    assert row["prompt_tokens"] == 3  # the fake counts words: "three little words"
    assert row["completion_tokens"] == 4  # "echo: three little words"


class _CountingSessions:
    def __init__(self, inner: async_sessionmaker[AsyncSession]) -> None:
        self.inner = inner
        self.opened = 0

    def __call__(self) -> AsyncSession:
        self.opened += 1
        return self.inner()


@pytest.fixture
async def sessions(pg: TempPostgres) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await upgrade_to_head_async(pg.url)
    engine = make_engine(pg.url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def test_junk_keys_cost_no_lookup_and_cannot_evict_valid_keys(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Reproduction: every junk key cost a database query and 10,000 junk keys evicted every
    valid cached key."""
    async with sessions() as s:
        _, key = await create_key(s, "robustness")
    counting = _CountingSessions(sessions)
    verifier = KeyVerifier(counting, ttl=300)  # type: ignore[arg-type]
    assert await verifier.verify(key) is not None
    assert counting.opened == 1
    for junk in ("junk", "sk-" + "a" * 48, "hsk-short", "hsk-" + "!" * 43):
        assert await verifier.verify(junk) is None
    assert counting.opened == 1  # wrong format: no lookup at all
    for _ in range(NEGATIVE_CACHE_SIZE + 50):  # well-formed unknown keys: looked up once each
        assert await verifier.verify("hsk-" + uuid.uuid4().hex + "x" * 11) is None
    looked_up = counting.opened
    assert await verifier.verify(key) is not None
    assert counting.opened == looked_up  # the valid key is still cached


@pytest.fixture(scope="module")
def strict_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    """Production-like: metrics on their own port, trusted proxies = a VPC CIDR, short body
    deadline."""
    from ml_server.tests.conftest import TEST_SETTINGS
    from ml_server.tests.pg import free_port
    from ml_server.tests.server_proc import provider_env

    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "METRICS_PORT": str(free_port()),
        "METRICS_HOST": "127.0.0.1",
        "FORWARDED_ALLOW_IPS": "10.0.0.0/16",
        "BODY_READ_TIMEOUT_SECONDS": "0.5",
        "HEADER_READ_SECONDS": "1",
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


def test_metrics_are_not_on_the_public_port(strict_server: ServerProcess) -> None:
    """Reproduction: /metrics on the public port, blocked only by an ALB rule /%6detrics passed."""
    for path in ("/metrics", "/%6detrics"):
        assert http.get(strict_server.url + path).status_code == 404
    port = strict_server.env["METRICS_PORT"]
    text = http.get(f"http://127.0.0.1:{port}/metrics").text
    assert "mlserver_usage_rows_written_total" in text


def test_forwarded_for_is_trusted_only_from_the_vpc(
    strict_server: ServerProcess, pg: TempPostgres
) -> None:
    """Reproduction: the logged client IP could be forged with X-Forwarded-For."""
    http.get(strict_server.url + "/health", headers={"X-Forwarded-For": "203.0.113.66"})
    time.sleep(0.3)
    assert "203.0.113.66" not in strict_server.log()


def test_slow_body_gets_408(strict_server: ServerProcess, pg: TempPostgres) -> None:
    """Reproduction: a slow body kept the connection open indefinitely."""
    key = strict_server.cli("keys", "create", "--name", "slow").stdout.strip()
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + b'Content-Length: 1000\r\n\r\n{"model": '
        )
        started = time.monotonic()
        reply = s.recv(4096)
        assert time.monotonic() - started < 3
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def _trickle_head(port: int, head: bytes, pause: float, limit: float) -> tuple[bytes, float]:
    """Send ``head`` a byte every ``pause`` s (until the server answers or ``limit`` s pass);
    returns what the server sent and when."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.setblocking(False)
        reply = b""
        for byte in head:
            if time.monotonic() - started > limit:
                break
            try:
                s.sendall(bytes([byte]))
            except OSError:  # closed by the server
                break
            time.sleep(pause)
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            reply += chunk
            if not chunk or reply:
                break
        s.setblocking(True)
        s.settimeout(max(0.1, limit - (time.monotonic() - started)))
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except (TimeoutError, OSError):
            pass
    return reply, time.monotonic() - started


def test_slow_header_gets_408(strict_server: ServerProcess) -> None:
    """Reproduction: a request head trickled a byte at a time kept the connection open for as
    long as the client liked (uvicorn has no header deadline; each byte reset nothing)."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    reply, took = _trickle_head(strict_server.port, head, 0.05, 6)
    assert reply.startswith(b"HTTP/1.1 408"), (reply[:200], took)
    assert b"HEADER_READ_SECONDS" in reply
    assert took < 3, took  # HEADER_READ_SECONDS is 1 here


def test_silent_connection_is_closed(strict_server: ServerProcess) -> None:
    """A connection that never sends a byte is answered 408 and closed too."""
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=5) as s:
        started = time.monotonic()
        reply = s.recv(4096)
        assert time.monotonic() - started < 3
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_fast_header_keep_alive_unaffected(strict_server: ServerProcess) -> None:
    """Requests whose heads arrive at once keep working on one connection past the deadline."""
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=5) as s:
        for _ in range(3):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b"}"):  # head and body may come in separate reads
                reply += s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            time.sleep(0.6)  # 1.8 s in all, beyond HEADER_READ_SECONDS, idle between requests
