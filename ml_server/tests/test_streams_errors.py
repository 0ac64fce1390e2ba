"""Streams and provider errors as the official openai SDK sees them, against the fault-injecting
fake provider: in-stream errors before content fall back, after content become an SSE error
event, a stream without [DONE] is an error, 402/quota fall back, upstream code/param/type and
request id pass through, list-shaped bodies parse, key fragments never reach the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ml_server.tests import http
from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

ALIASES = {
    "err-before": ["openai/x-streamerror-0", "deepseek/gpt-4o"],
    "quota": ["deepseek/x-status-402", "openai/gpt-4o"],
}


@pytest.fixture(scope="module")
def fallback_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "MODEL_ALIASES": json.dumps(ALIASES),
        "PROVIDER_MAX_RETRIES": "0",
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture
def fb_client(fallback_server: ServerProcess, pg: TempPostgres) -> openai.OpenAI:
    key = fallback_server.cli("keys", "create", "--name", "streams").stdout.strip()
    return openai.OpenAI(base_url=fallback_server.url + "/v1", api_key=key, max_retries=0)


MSG: Any = [{"role": "user", "content": "one two three four five"}]


def _metric(server: ServerProcess, prefix: str) -> float:
    for line in http.get(server.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_error_inside_stream_before_content_falls_back(
    fb_client: openai.OpenAI, fallback_server: ServerProcess
) -> None:
    """Reproduction: an in-stream error (HTTP 200) counted as success: no fallback, no breaker."""
    errors = 'mlserver_provider_errors_total{kind="http_5xx",provider="openai"}'
    before = _metric(fallback_server, errors)
    stream = fb_client.chat.completions.create(model="err-before", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: one two three four five"
    assert _metric(fallback_server, errors) == before + 1


def test_error_inside_stream_after_content_is_an_sse_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="openai/x-streamerror-2", messages=MSG, stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as err:
        for c in stream:
            if c.choices:
                got.append(c.choices[0].delta.content or "")
    assert "".join(got).startswith("echo:")
    assert "overloaded" in str(err.value).lower()


def test_stream_without_done_is_an_error_not_a_success(client: openai.OpenAI) -> None:
    """Reproduction: a stream cut without [DONE] got a synthetic [DONE]: the SDK saw success."""
    stream = client.chat.completions.create(model="openai/x-nodone", messages=MSG, stream=True)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "stream_incomplete" in str(err.value) or "before it was complete" in str(err.value)


def test_402_is_provider_side_and_falls_back(fb_client: openai.OpenAI) -> None:
    """Reproduction: DeepSeek's 402 became the client's 400 and the fallback never ran."""
    r = fb_client.chat.completions.create(model="quota", messages=MSG)
    assert r.choices[0].message.content == "echo: one two three four five"


def test_402_alone_is_a_502_quota_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="deepseek/x-status-402", messages=MSG)
    assert err.value.status_code == 502
    assert err.value.code == "provider_quota_exceeded"


def test_upstream_code_param_type_and_request_id_pass_through(client: openai.OpenAI) -> None:
    """Reproduction: context_length_exceeded was replaced by provider_bad_request."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="openai/x-ctxlen", messages=MSG)
    e = err.value
    assert e.code == "context_length_exceeded"
    assert e.param == "messages"
    assert e.type == "invalid_request_error"
    assert e.response.headers["x-upstream-request-id"] == "req_fake_ctx_123"
    assert "req_fake_ctx_123" in e.message


def test_gemini_list_shaped_error_body_is_parsed(client: openai.OpenAI) -> None:
    """Reproduction: Gemini's list-shaped error bodies became 'no details'."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gemini/x-geminilist", messages=MSG)
    assert "Invalid JSON payload: unknown field" in err.value.message
    assert err.value.code == "400" or err.value.type == "INVALID_ARGUMENT"


def test_key_fragments_in_provider_errors_are_not_relayed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="openai/x-keyleak", messages=MSG)
    body = err.value.response.text
    assert err.value.status_code == 502
    assert "sk-proj" not in body and "wxyz" not in body and "ab12" not in body
    assert "[redacted]" in body
