"""Session fixtures: a real PostgreSQL, the fake provider, the real server process, an API key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import openai
import pytest

from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

# Small values so the behaviour shows quickly; production defaults are in config.py.
TEST_SETTINGS = {
    "ENVIRONMENT": "staging",  # production-like: placeholder checks are on
    "USAGE_FLUSH_SECONDS": "0.1",
    "USAGE_RETRY_MAX_SECONDS": "0.5",
    "KEY_CACHE_SECONDS": "0",
    "STREAM_KEEPALIVE_SECONDS": "0.3",
    "PROVIDER_TIMEOUT_SECONDS": "2",
    "MAX_BODY_BYTES": "65536",
    "MODEL_ALIASES": '{"smart": "anthropic/claude-haiku-4-5", "cheap": "openai/gpt-4o-mini"}',
    "EXTRA_MODELS": '["azure/Phi-4"]',
    # One attempt per request and no breaker here, so each test sees the plain error mapping;
    # test_resilience.py runs its own servers with retries, fallbacks and breakers on.
    "PROVIDER_MAX_RETRIES": "0",
    "BREAKER_FAILURE_THRESHOLD": "1000",
    # Fast teardown (the production drain is 600 s; the drain tests set their own).
    "DRAIN_SECONDS": "5",
    # /metrics on the app port in the tests (production: its own port, METRICS_PORT 9101).
    "METRICS_PORT": "0",
    # Made-up prices for the fake provider's models (cost arithmetic end to end).
    "MODEL_CATALOG_FILE": str(Path(__file__).resolve().parent / "catalog_fixture.yaml"),
}


@pytest.fixture(scope="session")
def pg() -> Iterator[TempPostgres]:
    cluster = TempPostgres().init()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    proc = ServerProcess({**TEST_SETTINGS, **pg.env(), **provider_env(fake.url)})
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def api_key(server: ServerProcess) -> str:
    result = server.cli("keys", "create", "--name", "pytest")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def client(server: ServerProcess, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=20)


@pytest.fixture
async def db(pg: TempPostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg.dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def rejecting_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    """A server whose provider credentials the fake provider rejects with 401."""
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "OPENAI_API_KEY": "sk-test-rejected-not-real",
        "ANTHROPIC_API_KEY": "sk-test-rejected-not-real",
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()
