"""The server as a real process, the official openai SDK as client, the fake provider upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid

import asyncpg
import openai
import pytest

from ml_server.tests import http
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.server_proc import FAKE_KEYS, ServerProcess

pytestmark = pytest.mark.slow

# (model prefix, path the provider must receive, auth header name, expected header value)
OPENAI_COMPATIBLE = [
    ("openai", "/openai/v1/chat/completions", "authorization",
     "Bearer " + FAKE_KEYS["OPENAI_API_KEY"]),
    ("deepseek", "/deepseek/v1/chat/completions", "authorization",
     "Bearer " + FAKE_KEYS["DEEPSEEK_API_KEY"]),
    ("xai", "/xai/v1/chat/completions", "authorization", "Bearer " + FAKE_KEYS["XAI_API_KEY"]),
    ("gemini", "/v1beta/openai/chat/completions", "authorization",
     "Bearer " + FAKE_KEYS["GOOGLE_API_KEY"]),
    ("azure", "/azure/models/chat/completions", "api-key", FAKE_KEYS["AZURE_INFERENCE_CREDENTIAL"]),
]  # fmt: skip


def test_health_needs_no_key_and_names_the_environment(server: ServerProcess) -> None:
    with urllib.request.urlopen(server.url + "/health") as r:  # noqa: S310
        body = json.loads(r.read())
    assert body["status"] == "ok"
    assert body["environment"] == "staging"
    assert "version" in body


def test_models_lists_only_configured_providers(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "deepseek/deepseek-chat"} <= ids
    assert {"gemini/gemini-2.5-flash", "xai/grok-4", "azure/Phi-4", "smart", "cheap"} <= ids
    assert not any(i.startswith("fake/") for i in ids)  # keys are set: no built-in fake provider


@pytest.mark.parametrize(("prefix", "path", "header", "value"), OPENAI_COMPATIBLE)
def test_openai_compatible_provider_gets_its_path_auth_and_model(
    client: openai.OpenAI, fake: FakeProvider, prefix: str, path: str, header: str, value: str
) -> None:
    fake.clear()
    reply = client.chat.completions.create(
        model=f"{prefix}/some-model",
        messages=[{"role": "user", "content": "hello gateway"}],
        temperature=0.2,
    )
    assert reply.choices[0].message.content == "echo: hello gateway"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    sent = fake.last("/chat/completions")
    assert sent["path"] == path
    assert sent["headers"][header] == value
    assert sent["body"]["model"] == "some-model"  # our prefix stripped
    assert sent["body"]["temperature"] == 0.2  # everything else forwarded as is
    if prefix == "azure":
        assert sent["query"] == {"api-version": "2024-05-01-preview"}
        assert "authorization" not in sent["headers"]
    # The client's own key never reaches a provider.
    assert all("hsk-" not in v for v in sent["headers"].values())


def test_alias_routes_to_its_target(client: openai.OpenAI, fake: FakeProvider) -> None:
    fake.clear()
    client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}])
    sent = fake.last("/chat/completions")
    assert sent["path"] == "/openai/v1/chat/completions"
    assert sent["body"]["model"] == "gpt-4o-mini"


def test_streamed_chat_relays_chunks_and_done(client: openai.OpenAI, fake: FakeProvider) -> None:
    fake.clear()
    stream = client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # We asked the provider for usage (for accounting) but hid that chunk from this client.
    assert fake.last("/chat/completions")["body"]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)


def test_streamed_chat_passes_usage_when_client_asks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="deepseek/deepseek-chat",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_stream_sends_keepalive_before_first_token_and_no_buffering_header(
    server: ServerProcess, api_key: str
) -> None:
    body = {
        "model": "openai/gpt-firstdelay-1000",
        "stream": True,
        "messages": [{"role": "user", "content": "wait"}],
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    r = http.post(server.url + "/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["content-type"].startswith("text/event-stream")
    raw = r.text
    first_data = raw.index("data: ")
    assert ": keep-alive" in raw[:first_data]
    assert raw.rstrip().endswith("data: [DONE]")


def test_embeddings(client: openai.OpenAI, fake: FakeProvider) -> None:
    fake.clear()
    out = client.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b c"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 4
    sent = fake.last("/embeddings")
    assert sent["path"] == "/openai/v1/embeddings"
    assert sent["body"]["model"] == "text-embedding-3-small"
    assert sent["body"]["input"] == ["a", "b c"]
    assert sent["headers"]["authorization"] == "Bearer " + FAKE_KEYS["OPENAI_API_KEY"]


def test_anthropic_translation_plain(client: openai.OpenAI, fake: FakeProvider) -> None:
    fake.clear()
    reply = client.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hello claude"},
        ],
        max_tokens=50,
        stop=["END"],
    )
    assert reply.choices[0].message.content == "echo: hello claude"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens == 4
    sent = fake.last("/messages")
    assert sent["path"] == "/anthropic/v1/messages"
    assert sent["headers"]["x-api-key"] == FAKE_KEYS["ANTHROPIC_API_KEY"]
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent["headers"]
    body = sent["body"]
    assert body["model"] == "claude-haiku-4-5"
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["max_tokens"] == 50
    assert body["stop_sequences"] == ["END"]


def test_anthropic_translation_tools(client: openai.OpenAI, fake: FakeProvider) -> None:
    reply = client.chat.completions.create(
        model="anthropic/claude-tools",
        messages=[{"role": "user", "content": "look it up"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
        tool_choice="required",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "x"}  # type: ignore[union-attr]
    body = fake.last("/messages")["body"]
    assert body["tools"][0]["input_schema"]["properties"] == {"q": {"type": "string"}}
    assert body["tool_choice"] == {"type": "any"}
    assert body["max_tokens"] == 4096  # Anthropic requires it; our default


def test_anthropic_translation_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)


def test_anthropic_streaming_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="anthropic/claude-tools",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
    )
    args = ""
    name = None
    finish = None
    for c in stream:
        for tc in c.choices[0].delta.tool_calls or []:
            name = tc.function.name or name  # type: ignore[union-attr]
            args += tc.function.arguments or ""  # type: ignore[union-attr]
        finish = c.choices[0].finish_reason or finish
    assert name == "lookup" and json.loads(args) == {"q": "x"}
    assert finish == "tool_calls"


# --- errors ----------------------------------------------------------------------------------


def test_missing_and_wrong_key_are_401(server: ServerProcess) -> None:
    for key in ("hsk-wrong-key-not-real",):
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        assert err.value.status_code == 401
        assert err.value.code == "invalid_api_key"
    r = http.get(server.url + "/v1/models")
    assert r.status_code == 401
    assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    for model in ("nope/model", "no-prefix", "mistral/large"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert err.value.code == "model_not_found"


def test_bad_json_400_schema_422_and_server_keeps_serving(
    server: ServerProcess, api_key: str, client: openai.OpenAI
) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    r = http.post(server.url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model="openai/gpt-4o", messages=[])
    assert "messages" in err.value.message
    r = http.post(
        server.url + "/v1/chat/completions",
        json={"model": "openai/x", "messages": [{"role": "robot"}]},
        headers=headers,
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages[0].role"
    assert (
        client.chat.completions.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": "still here"}]
        )
        .choices[0]
        .message.content
        == "echo: still here"
    )


def test_body_over_limit_is_413_and_server_keeps_serving(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": "x" * 70_000}]
        )
    assert err.value.status_code == 413
    # A chunked body without Content-Length is cut off too.
    key = client.api_key
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\r\n".encode()
        )
        chunk = b"x" * 40_000
        for _ in range(2):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        reply = s.recv(200)
    assert reply.startswith(b"HTTP/1.1 413")
    assert client.models.list().data


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("openai/gpt-status-503", 502, "provider_error"),
        ("openai/gpt-status-500", 502, "provider_error"),
        ("openai/gpt-status-400", 400, "400"),  # the upstream code passes through
        ("anthropic/claude-status-500", 502, "provider_error"),
        ("anthropic/claude-status-529", 503, "provider_error"),
        ("openai/gpt-hang", 504, "provider_timeout"),
    ],
)
def test_provider_errors_map_to_clear_statuses(
    client: openai.OpenAI, model: str, status: int, code: str
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == status
    assert err.value.code == code
    assert "Traceback" not in err.value.message


@pytest.mark.parametrize("model", ["openai/gpt-ratelimit-7", "anthropic/claude-ratelimit-7"])
@pytest.mark.parametrize("stream", [False, True])
def test_rate_limit_passes_429_and_retry_after(
    client: openai.OpenAI, model: str, stream: bool
) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=stream
        )
    assert err.value.response.headers["retry-after"] == "7"


def test_provider_rejecting_our_credentials_is_502(rejecting_server: ServerProcess) -> None:
    """A provider 401 is the operator's problem, not the client's: 502 with a clear message."""
    key = rejecting_server.cli("keys", "create", "--name", "rejected").stdout.strip()
    c = openai.OpenAI(base_url=rejecting_server.url + "/v1", api_key=key, max_retries=0)
    for model in ("openai/gpt-4o", "anthropic/claude-x"):
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 502
        assert "rejected the server's credentials" in err.value.message


def test_request_id_is_honoured_and_logged(server: ServerProcess, api_key: str) -> None:
    r = http.get(
        server.url + "/v1/models",
        headers={"Authorization": f"Bearer {api_key}", "X-Request-ID": "req-test-12345"},
    )
    assert r.headers["x-request-id"] == "req-test-12345"
    generated = http.get(server.url + "/health").headers["x-request-id"]
    assert len(generated) == 32
    lines = [json.loads(x) for x in server.log().splitlines() if "req-test-12345" in x]
    access = [x for x in lines if x.get("logger") == "ml_server.access"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["path"] == "/v1/models"
    assert api_key not in server.log()


def test_metrics_exposes_requests_latency_provider_errors_tokens(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    client.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "m"}]
    )
    # Its own provider 5xx (one, no SDK retry): the test does not rely on an earlier test's.
    with pytest.raises(openai.APIStatusError):
        client.with_options(max_retries=0).chat.completions.create(
            model="openai/gpt-status-500", messages=[{"role": "user", "content": "m"}]
        )
    text = http.get(server.url + "/metrics").text
    assert (
        'mlserver_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    )
    assert "mlserver_request_duration_seconds_bucket" in text
    assert 'mlserver_provider_errors_total{kind="http_5xx",provider="openai"}' in text
    assert 'mlserver_tokens_total{kind="completion",provider="openai"}' in text


def test_stream_that_times_out_after_commit_ends_with_an_error_event(
    client: openai.OpenAI,
) -> None:
    """Past the keep-alive interval the status is already 200: the failure comes as an SSE error."""
    stream = client.chat.completions.create(
        model="openai/gpt-hang", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as err:
        list(stream)
    assert "did not answer in time" in err.value.message


async def test_client_disconnect_mid_stream_is_accounted(
    server: ServerProcess, api_key: str, db: asyncpg.Connection
) -> None:
    rid = "t-disconnect-" + uuid.uuid4().hex[:8]
    body = (
        b'{"model": "openai/gpt-firstdelay-3000", "stream": true, '
        b'"messages": [{"role": "user", "content": "bye"}]}'
    )
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api_key}\r\nX-Request-ID: {rid}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert s.recv(100).startswith(b"HTTP/1.1 200")  # committed, keep-alives flowing
    # The row says the client went away (499), and the server keeps serving.
    end = time.monotonic() + 15
    status = None
    while time.monotonic() < end and status is None:
        status = await db.fetchval("SELECT status_code FROM usage WHERE request_id = $1", rid)
        await asyncio.sleep(0.1)
    assert status == 499
    assert http.get(server.url + "/health").status_code == 200
    assert "Traceback" not in server.log()
