"""Retries, fallbacks, deadline, circuit breaker, per-key rate limit and draining on SIGTERM.

Against the fake provider (behaviour chosen by words in the model name, see fake_provider.py), the
real server process and a real PostgreSQL; the official openai SDK is the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator

import asyncpg
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ml_server.__main__ import _rpm as rpm_argument
from ml_server.tests import http
from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

# Small numbers so every behaviour shows in about a second.
RESILIENCE_SETTINGS = {
    "PROVIDER_MAX_RETRIES": "2",
    "RETRY_BACKOFF_BASE_SECONDS": "0.05",
    "RETRY_BACKOFF_MAX_SECONDS": "0.2",
    "RETRY_AFTER_MAX_SECONDS": "5",
    "REQUEST_DEADLINE_SECONDS": "4",
    "PROVIDER_TIMEOUT_SECONDS": "10",
    "PROVIDER_TIMEOUTS": '{"xai": {"read": 0.5}}',
    "BREAKER_FAILURE_THRESHOLD": "3",
    "BREAKER_COOLDOWN_SECONDS": "1.5",
    "MODEL_ALIASES": json.dumps(
        {
            "fb-5xx": ["gemini/m-status-503", "deepseek/m-ok"],
            "fb-timeout": ["xai/m-hang", "deepseek/m-ok"],
        }
    ),
}
# Each provider's path prefix at the fake (see provider_env).
PATHS = {
    "openai": "/openai/v1/",
    "deepseek": "/deepseek/v1/",
    "xai": "/xai/v1/",
    "gemini": "/v1beta/openai/",
    "azure": "/azure/models/",
    "anthropic": "/anthropic/v1/",
}
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def _env(pg: TempPostgres, fake: FakeProvider, **extra: str) -> dict[str, str]:
    return {**TEST_SETTINGS, **pg.env(), **provider_env(fake.url), **RESILIENCE_SETTINGS, **extra}


@pytest.fixture(scope="module")
def rserver(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    proc = ServerProcess(_env(pg, fake))
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def rkey(rserver: ServerProcess) -> str:
    result = rserver.cli("keys", "create", "--name", "resilience")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def rclient(rserver: ServerProcess, rkey: str, fake: FakeProvider) -> openai.OpenAI:
    fake.clear()
    return openai.OpenAI(base_url=rserver.url + "/v1", api_key=rkey, max_retries=0, timeout=30)


def _calls(fake: FakeProvider, provider: str, model_part: str = "") -> list[dict[str, object]]:
    return [
        r
        for r in fake.requests
        if str(r["path"]).startswith(PATHS[provider])
        and model_part in str((r["body"] or {}).get("model", ""))
    ]


def _metric(server: ServerProcess, pattern: str, default: float | None = None) -> float:
    text = http.get(server.url + "/metrics").text
    m = re.search(rf"^{pattern} (\S+)$", text, re.M)
    if m is None and default is not None:
        return default
    assert m, f"{pattern} not in /metrics"
    return float(m.group(1))


def _uid() -> str:
    return "u" + uuid.uuid4().hex[:8]


async def _usage_row(db: asyncpg.Connection, rid: str) -> asyncpg.Record:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        row = await db.fetchrow("SELECT * FROM usage WHERE request_id = $1", rid)
        if row is not None:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"no usage row for {rid}")


# --- fallback and retries --------------------------------------------------------------------


async def test_fallback_to_second_target_when_first_returns_5xx(
    rclient: openai.OpenAI, fake: FakeProvider, db: asyncpg.Connection
) -> None:
    rid = "t-fb-" + _uid()
    reply = rclient.chat.completions.create(
        model="fb-5xx", messages=MSG, extra_headers={"X-Request-ID": rid}
    )
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.model == "m-ok"  # the fallback's own model id
    assert len(_calls(fake, "gemini")) == 3  # first attempt + PROVIDER_MAX_RETRIES=2
    assert len(_calls(fake, "deepseek")) == 1
    row = await _usage_row(db, rid)
    assert (row["provider"], row["model"], row["status_code"]) == ("deepseek", "m-ok", 200)


async def test_fallback_when_first_target_times_out(
    rserver: ServerProcess, rclient: openai.OpenAI, fake: FakeProvider, db: asyncpg.Connection
) -> None:
    """xai's read timeout is 0.5 s (PROVIDER_TIMEOUTS), well inside the 4 s deadline. The
    stream's usage row names the fallback that served it (the router's answer, not the
    route's first choice)."""
    retries = r'mlserver_provider_retries_total\{provider="xai"\}'
    retries_before = _metric(rserver, retries, default=0.0)
    rid = "t-fbs-" + _uid()
    reply = rclient.chat.completions.create(
        model="fb-timeout", messages=MSG, stream=True, extra_headers={"X-Request-ID": rid}
    )
    text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    assert text == "echo: hello there"
    assert len(_calls(fake, "xai")) == 3
    assert len(_calls(fake, "deepseek")) == 1
    assert _metric(rserver, retries) - retries_before == 2
    assert _metric(rserver, r'mlserver_provider_fallbacks_total\{provider="xai"\}') >= 1
    row = await _usage_row(db, rid)
    assert (row["provider"], row["model"], row["status_code"]) == ("deepseek", "m-ok", 200)


@pytest.mark.parametrize("stream", [False, True])
def test_5xx_is_retried_on_the_same_target_before_the_first_byte(
    rclient: openai.OpenAI, fake: FakeProvider, stream: bool
) -> None:
    model = f"openai/gpt-flaky-2-status-503-{_uid()}"
    if stream:
        chunks = rclient.chat.completions.create(model=model, messages=MSG, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = rclient.chat.completions.create(model=model, messages=MSG)
        text = reply.choices[0].message.content or ""
    assert text == "echo: hello there"
    assert len(_calls(fake, "openai")) == 3  # 503, 503, then the answer


def test_retry_after_is_honoured(rclient: openai.OpenAI, fake: FakeProvider) -> None:
    model = f"openai/gpt-flaky-1-ratelimit-1-{_uid()}"
    started = time.monotonic()
    reply = rclient.chat.completions.create(model=model, messages=MSG)
    elapsed = time.monotonic() - started
    assert reply.choices[0].message.content == "echo: hello there"
    assert len(_calls(fake, "openai", model.split("/")[1])) == 2  # the 429, then the retry
    assert elapsed >= 1.0  # waited as the provider asked (Retry-After: 1)


def test_retry_after_beyond_the_cap_answers_429_at_once(
    rclient: openai.OpenAI, fake: FakeProvider
) -> None:
    """Retry-After 7 > RETRY_AFTER_MAX_SECONDS (5): no waiting; the client gets the 429."""
    with pytest.raises(openai.RateLimitError) as err:
        rclient.chat.completions.create(model="openai/gpt-ratelimit-7", messages=MSG)
    assert err.value.response.headers["retry-after"] == "7"
    assert len(_calls(fake, "openai")) == 1


def test_client_errors_are_not_retried(rclient: openai.OpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError):
        rclient.chat.completions.create(model="deepseek/m-status-400", messages=MSG)
    assert len(_calls(fake, "deepseek")) == 1


# --- deadline --------------------------------------------------------------------------------


def test_deadline_bounds_total_time(rclient: openai.OpenAI, fake: FakeProvider) -> None:
    """anthropic's read timeout is 10 s; the 4 s request deadline ends the request first."""
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        rclient.chat.completions.create(model="anthropic/claude-hang", messages=MSG)
    elapsed = time.monotonic() - started
    assert err.value.status_code == 504
    assert err.value.code == "deadline_exceeded"
    assert "REQUEST_DEADLINE_SECONDS" in err.value.message
    assert 4.0 <= elapsed < 10.0
    assert len(_calls(fake, "anthropic")) == 1


# --- circuit breaker -------------------------------------------------------------------------


def test_breaker_opens_fails_fast_and_recovers(
    rserver: ServerProcess, rclient: openai.OpenAI, fake: FakeProvider
) -> None:
    state = r'mlserver_circuit_state\{provider="azure"\}'
    assert _metric(rserver, state) == 0
    # One request: three attempts, three consecutive failures = BREAKER_FAILURE_THRESHOLD.
    with pytest.raises(openai.APIStatusError) as err:
        rclient.chat.completions.create(model="azure/m-status-500", messages=MSG)
    assert err.value.status_code == 502
    assert len(_calls(fake, "azure")) == 3
    assert _metric(rserver, state) == 2  # open

    # Open: a healthy model of that provider fails fast, without reaching the provider.
    fake.clear()
    with pytest.raises(openai.APIStatusError) as err:
        rclient.chat.completions.create(model="azure/m-ok", messages=MSG)
    assert err.value.status_code == 503
    assert err.value.code == "provider_circuit_open"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 2
    assert _calls(fake, "azure") == []

    # An open breaker is reported by /ready but does not make the instance unready.
    ready = http.get(rserver.url + "/ready")
    assert ready.status_code == 200
    assert ready.json()["circuits"]["azure"] == "open"

    # After the cool-down one probe goes through; a failing probe opens it again at once.
    time.sleep(1.6)
    with pytest.raises(openai.APIStatusError):
        rclient.chat.completions.create(model="azure/m-status-500", messages=MSG)
    assert len(_calls(fake, "azure")) == 1
    assert _metric(rserver, state) == 2

    # A successful probe closes it.
    time.sleep(1.6)
    assert _metric(rserver, state) == 1  # half-open: the next call probes
    reply = rclient.chat.completions.create(model="azure/m-ok", messages=MSG)
    assert reply.choices[0].message.content == "echo: hello there"
    assert _metric(rserver, state) == 0
    assert http.get(rserver.url + "/ready").json()["circuits"]["azure"] == "closed"
    assert _metric(rserver, r'mlserver_circuit_opened_total\{provider="azure"\}') == 2


# --- streaming failures ----------------------------------------------------------------------


async def test_mid_stream_failure_ends_with_error_event_and_no_done(
    rserver: ServerProcess, rkey: str, fake: FakeProvider, db: asyncpg.Connection
) -> None:
    fake.clear()
    rid = "t-break-" + _uid()
    reply = http.post(
        rserver.url + "/v1/chat/completions",
        json={
            "model": "openai/gpt-breakafter-2",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five"}],
        },
        headers={"Authorization": f"Bearer {rkey}", "X-Request-ID": rid},
    )
    assert reply.status_code == 200
    events = [e for e in reply.text.split("\n\n") if e.startswith("data: ")]
    tokens = [json.loads(e[6:]) for e in events[:-1]]
    assert "".join(t["choices"][0]["delta"].get("content", "") for t in tokens) == "echo: one"
    error = json.loads(events[-1][6:])["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == "provider_unreachable"
    # No [DONE] after an error: a client that ignores error events must not see a success.
    assert "[DONE]" not in reply.text
    assert len(_calls(fake, "openai")) == 1  # tokens were sent: never retried
    row = await _usage_row(db, rid)
    assert (row["stream"], row["status_code"]) == (True, 502)

    # The official SDK reports it as an error after the tokens it got.
    client = openai.OpenAI(base_url=rserver.url + "/v1", api_key=rkey, max_retries=0)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="openai/gpt-breakafter-2", messages=MSG, stream=True
        ):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got) == "echo: hello"


# --- per-key rate limit ----------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(
    rserver: ServerProcess, db: asyncpg.Connection
) -> None:
    created = rserver.cli("keys", "create", "--name", "limited", "--rpm", "2")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    client = openai.OpenAI(base_url=rserver.url + "/v1", api_key=key, max_retries=0)
    limited_before = _metric(rserver, "mlserver_rate_limited_requests_total")
    for _ in range(2):
        client.chat.completions.create(model="deepseek/m-ok", messages=MSG)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="deepseek/m-ok", messages=MSG)
    assert err.value.code == "rate_limit_exceeded"
    assert "2 requests per minute" in err.value.message
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 30
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert _metric(rserver, "mlserver_rate_limited_requests_total") == limited_before + 1

    # `keys set-rpm ID 0` lifts it (KEY_CACHE_SECONDS=0 here).
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE rate_limit_rpm = 2 ORDER BY id DESC")
    assert rserver.cli("keys", "set-rpm", str(key_id), "0").returncode == 0
    for _ in range(3):
        client.chat.completions.create(model="deepseek/m-ok", messages=MSG)
    with pytest.raises(argparse.ArgumentTypeError, match="RPM must be a whole number"):
        rpm_argument("-5")
    assert rpm_argument("default") is None


# --- graceful shutdown -----------------------------------------------------------------------


async def test_sigterm_lets_20_streams_finish_then_exits_0(
    pg: TempPostgres, fake: FakeProvider, db: asyncpg.Connection, rkey: str
) -> None:
    proc = ServerProcess(_env(pg, fake, DRAIN_SECONDS="20")).start()
    try:
        client = openai.AsyncOpenAI(base_url=proc.url + "/v1", api_key=rkey, max_retries=0)
        words = " ".join(f"w{i}" for i in range(15))  # 16 chunks 100 ms apart: ~1.6 s
        started = [asyncio.Event() for _ in range(20)]
        ids = [f"t-drain-{i}-{_uid()}" for i in range(20)]

        async def one(i: int) -> tuple[str, str | None]:
            stream = await client.chat.completions.create(
                model="openai/gpt-chunkdelay-100",
                messages=[{"role": "user", "content": words}],
                stream=True,
                extra_headers={"X-Request-ID": ids[i]},
            )
            text, finish = "", None
            async for chunk in stream:
                for c in chunk.choices:
                    text += c.delta.content or ""
                    finish = c.finish_reason or finish
                if text:
                    started[i].set()
            return text, finish

        tasks = [asyncio.create_task(one(i)) for i in range(20)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 20)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)  # every stream has sent tokens by now

        # New connections are refused while the streams finish.
        refused = False
        end = time.monotonic() + 1.0
        while time.monotonic() < end and not refused:
            try:
                socket.create_connection(("127.0.0.1", proc.port), timeout=0.2).close()
                await asyncio.sleep(0.05)
            except OSError:
                refused = True
        assert refused
        assert not all(t.done() for t in tasks)

        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert all(r == ("echo: " + words, "stop") for r in results)
        code = await asyncio.to_thread(proc.proc.wait, 30)
        assert code == 0, proc.log()
        rows = await db.fetch(
            "SELECT status_code, stream FROM usage WHERE request_id = ANY($1)", ids
        )
        assert len(rows) == 20
        assert all(r["status_code"] == 200 and r["stream"] for r in rows)
        assert "timeout graceful shutdown exceeded" not in proc.log()
    finally:
        proc.stop()


async def test_drain_time_is_bounded_and_cut_streams_are_accounted(
    pg: TempPostgres, fake: FakeProvider, db: asyncpg.Connection, rkey: str
) -> None:
    """DRAIN_SECONDS=1: a 6 s stream is cut after the drain, its row (499) still flushed, exit 0."""
    proc = ServerProcess(_env(pg, fake, DRAIN_SECONDS="1")).start()
    try:
        client = openai.AsyncOpenAI(base_url=proc.url + "/v1", api_key=rkey, max_retries=0)
        rid = "t-cut-" + _uid()
        stream = await client.chat.completions.create(
            model="openai/gpt-chunkdelay-300",
            messages=[{"role": "user", "content": " ".join(["w"] * 20)}],
            stream=True,
            extra_headers={"X-Request-ID": rid},
        )
        it = stream.__aiter__()
        await it.__anext__()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        finish = None
        try:
            async for chunk in it:
                finish = chunk.choices[0].finish_reason if chunk.choices else finish
        except Exception:  # noqa: S110 - the connection is cut; how the client reports it varies
            pass
        assert finish is None  # the stream did not complete
        code = await asyncio.to_thread(proc.proc.wait, 20)
        assert code == 0, proc.log()
        row = await _usage_row(db, rid)
        assert row["status_code"] == 499
    finally:
        proc.stop()
