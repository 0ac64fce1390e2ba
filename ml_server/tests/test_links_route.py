"""POST /v1/links/analyze on the real server process: a local page, the model's answer through
the router (usage row in PostgreSQL), refusals in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import httpx
import pytest

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

PAGE = (
    b"<html><head><title>Ferry timetable</title></head><body><article><h1>Ferry timetable</h1>"
    b"<p>The first ferry from Central leaves at 06:30 and the last at 23:30, every twelve "
    b"minutes in the rush hours and every twenty minutes otherwise.</p></article></body></html>"
)


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def links_server(pg: TempPostgres, fake: FakeProvider, page_url: str) -> Iterator[ServerProcess]:
    port = page_url.rsplit(":", 1)[1]
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "LINKS_ALLOW_DIRECT": "true",  # no proxy credentials here: a direct fetch
        "LINKS_ALLOWED_CIDRS": '["127.0.0.1/32"]',  # the local page stands in for the internet
        "LINKS_ALLOWED_PORTS": f"[80, 443, {port}]",
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def links_key(links_server: ServerProcess) -> str:
    result = links_server.cli("keys", "create", "--name", "links-test")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _post(
    server: ServerProcess, key: str, body: dict[str, object], rid: str = ""
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if rid:
        headers["X-Request-Id"] = rid
    return httpx.post(server.url + "/v1/links/analyze", json=body, headers=headers, timeout=30)


def test_a_page_is_analyzed(links_server: ServerProcess, links_key: str, page_url: str) -> None:
    reply = _post(links_server, links_key, {"url": f"{page_url}/timetable"})
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["title"] == "Ferry timetable" and "06:30" in data["text"]
    assert data["via_proxy"] is False and data["truncated"] is False and "answer" not in data


async def test_a_question_is_answered_by_the_model_with_a_usage_row(
    links_server: ServerProcess, links_key: str, page_url: str, db: asyncpg.Connection
) -> None:
    rid = "links-" + uuid.uuid4().hex
    body: dict[str, object] = {
        "url": f"{page_url}/timetable",
        "model": "openai/gpt-4o",
        "question": "First ferry?",
    }
    reply = await asyncio.to_thread(_post, links_server, links_key, body, rid)
    assert reply.status_code == 200, reply.text
    answer = reply.json()["answer"]
    assert answer["content"] and answer["usage"]["prompt_tokens"] > 0
    end = time.monotonic() + 30
    row = None
    while row is None and time.monotonic() < end:
        row = await db.fetchrow(
            "SELECT endpoint, status_code, prompt_tokens FROM usage WHERE request_id = $1", rid
        )
        await asyncio.sleep(0.1)
    assert row is not None and row["endpoint"] == "links" and row["status_code"] == 200


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", 400, "url_not_allowed"),
        ("file:///etc/passwd", 400, "url_not_allowed"),
        ("http://10.0.0.1/", 400, "url_not_allowed"),
    ],
)
def test_refusals_are_openai_shaped(
    links_server: ServerProcess, links_key: str, url: str, status: int, code: str
) -> None:
    reply = _post(links_server, links_key, {"url": url})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["param"] == "url"


def test_bad_input_and_a_missing_page(
    links_server: ServerProcess, links_key: str, page_url: str
) -> None:
    assert _post(links_server, links_key, {}).status_code == 422
    reply = _post(links_server, links_key, {"url": page_url, "question": "why?"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "question"
    reply = _post(links_server, links_key, {"url": page_url, "colour": "red"})
    assert reply.status_code == 400 and "colour" in reply.json()["error"]["message"]
    reply = _post(links_server, links_key, {"url": f"{page_url}/missing"})
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "page_error"


def test_a_key_is_required_and_the_tool_definition_is_served(
    links_server: ServerProcess, links_key: str, page_url: str
) -> None:
    assert (
        httpx.post(links_server.url + "/v1/links/analyze", json={"url": page_url}).status_code
        == 401
    )
    tool = httpx.get(
        links_server.url + "/v1/links/tool", headers={"Authorization": f"Bearer {links_key}"}
    ).json()
    assert tool["function"]["name"] == "humansa_analyze_link"
    reply = _post(links_server, links_key, {"url": f"{page_url}/t", "format": "tool"})
    assert reply.json()["content"].startswith("Title: Ferry timetable\nURL: ")
