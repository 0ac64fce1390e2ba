"""``MEMORY_BACKEND=mem0``: the same memory API forwarded to Mem0's cloud, here a stand-in Mem0
on 127.0.0.1 (MEM0_BASE_URL), never the internet; and the settings that choose the backend.

The stand-in keeps memories in a dict and answers Mem0's v1 paths in Mem0's shapes (search as
a bare list, as v1 does; add as v1.1's ``{"results": [...]}``); it checks the ``Token`` header.
It is no model of Mem0's extraction: it stores user messages as they are.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from ml_server.config import SettingsError, load_settings
from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

MEM0_KEY = "m0-test-not-a-real-key"
ENTITY = ("user_id", "agent_id", "run_id")


class FakeMem0:
    def __init__(self) -> None:
        self.memories: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _json(self, data: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read()) if request.can_read_body else None
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "body": body,
            }
        )
        if request.headers.get("Authorization") != f"Token {MEM0_KEY}":
            return self._json({"detail": "Invalid API key"}, 401)
        path, method = request.path, request.method
        if path == "/v1/memories/" and method == "POST":
            assert isinstance(body, dict)
            out = []
            for msg in body["messages"]:
                if msg["role"] != "user":
                    continue
                mid = str(uuid.uuid4())
                self.memories[mid] = {
                    "id": mid,
                    "memory": msg["content"],
                    **{k: body.get(k) for k in ENTITY},
                    "metadata": body.get("metadata"),
                    "created_at": datetime.now(UTC).isoformat(),
                    "updated_at": None,
                }
                out.append({"id": mid, "memory": msg["content"], "event": "ADD"})
            return self._json({"results": out})
        if path == "/v1/memories/search/" and method == "POST":
            assert isinstance(body, dict)
            if "fail" in body["query"]:
                return self._json({"error": "boom"}, 500)
            words = set(body["query"].lower().split())
            found = []
            for m in self._scoped(body):
                overlap = len(words & set(m["memory"].lower().rstrip(".").split()))
                if overlap:
                    found.append({**m, "score": overlap / len(words)})
            found.sort(key=lambda m: -m["score"])
            return self._json(found[: body.get("top_k", 10)])  # v1: a bare list
        if path == "/v1/memories/" and method == "GET":
            found = self._scoped(dict(request.query))
            return self._json({"count": len(found), "results": found})
        if path == "/v1/memories/" and method == "DELETE":
            for m in self._scoped(dict(request.query)):
                del self.memories[m["id"]]
            return self._json({"message": "Memories deleted successfully!"})
        mid = path.removeprefix("/v1/memories/").strip("/")
        if mid not in self.memories:
            return self._json({"error": "Memory not found"}, 404)
        if method == "GET":
            return self._json(self.memories[mid])
        if method == "PUT":
            assert isinstance(body, dict)
            m = self.memories[mid]
            if "text" in body:
                m["memory"] = body["text"]
            if "metadata" in body:
                m["metadata"] = body["metadata"]
            m["updated_at"] = datetime.now(UTC).isoformat()
            return self._json(m)
        if method == "DELETE":
            del self.memories[mid]
            return self._json({"message": "Memory deleted successfully!"})
        return self._json({"error": "no such route"}, 404)

    def _scoped(self, ids: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = {k: ids[k] for k in ENTITY if ids.get(k)}
        assert wanted, "Mem0 needs an entity id"
        return [m for m in self.memories.values() if all(m[k] == v for k, v in wanted.items())]

    def start(self) -> FakeMem0:
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture(scope="module")
def mem0() -> Iterator[FakeMem0]:
    fake = FakeMem0().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def mem0_server(pg: TempPostgres, fake: FakeProvider, mem0: FakeMem0) -> Iterator[ServerProcess]:
    env = {
        **TEST_SETTINGS,
        **pg.env(),  # Debian's PostgreSQL without pgvector: the mem0 backend does not need it
        **provider_env(fake.url),
        "MEMORY_BACKEND": "mem0",
        "MEM0_API_KEY": MEM0_KEY,
        "MEM0_BASE_URL": mem0.url,
    }
    server = ServerProcess(env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def two_keys(mem0_server: ServerProcess, pg: TempPostgres) -> tuple[str, str, int]:
    keys = []
    for name in ("mem0-a", "mem0-b"):
        result = mem0_server.cli("keys", "create", "--name", name)
        assert result.returncode == 0, result.stderr
        keys.append(result.stdout.strip())

    async def key_a_id() -> int:
        conn = await asyncpg.connect(pg.dsn)
        try:
            found: int = await conn.fetchval(
                "SELECT id FROM api_keys WHERE name = 'mem0-a' ORDER BY id DESC LIMIT 1"
            )
            return found
        finally:
            await conn.close()

    return keys[0], keys[1], asyncio.run(key_a_id())


def _client(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=20
    )


def test_mem0_round_trip_is_namespaced_per_key(
    mem0_server: ServerProcess, mem0: FakeMem0, two_keys: tuple[str, str, int]
) -> None:
    key_a, _, key_a_id = two_keys
    with _client(mem0_server, key_a) as c:
        r = c.post(
            "/memories/",
            json={"messages": [{"role": "user", "content": "I collect stamps."}], "user_id": "al"},
        )
        assert r.status_code == 200, r.text
        [added] = r.json()["results"]
        assert added["memory"] == "I collect stamps." and added["event"] == "ADD"
        sent = mem0.requests[-1]
        assert sent["auth"] == f"Token {MEM0_KEY}" and sent["path"] == "/v1/memories/"
        assert sent["body"]["user_id"] == f"hsk{key_a_id}:al"
        assert sent["body"]["async_mode"] is False

        r = c.post("/memories/search/", json={"query": "stamps", "user_id": "al", "top_k": 3})
        assert r.status_code == 200, r.text
        [hit] = r.json()["results"]
        assert hit["id"] == added["id"] and hit["user_id"] == "al" and hit["score"] > 0

        r = c.put(f"/memories/{added['id']}/", json={"text": "I collect coins."})
        assert r.status_code == 200 and r.json()["memory"] == "I collect coins."
        assert r.json()["user_id"] == "al"
        r = c.get("/memories/", params={"user_id": "al"})
        assert [m["memory"] for m in r.json()["results"]] == ["I collect coins."]
        assert c.delete(f"/memories/{added['id']}/").status_code == 200
        assert c.get(f"/memories/{added['id']}/").status_code == 404


def test_mem0_memories_of_one_key_are_invisible_to_another(
    mem0_server: ServerProcess, two_keys: tuple[str, str, int]
) -> None:
    key_a, key_b, _ = two_keys
    with _client(mem0_server, key_a) as a, _client(mem0_server, key_b) as b:
        r = a.post("/memories/", json={"messages": "My locker is number 12.", "user_id": "same"})
        [mine] = r.json()["results"]
        assert b.get(f"/memories/{mine['id']}/").status_code == 404
        assert b.delete(f"/memories/{mine['id']}/").status_code == 404
        assert b.put(f"/memories/{mine['id']}/", json={"text": "x"}).status_code == 404
        r = b.post("/memories/search/", json={"query": "locker number", "user_id": "same"})
        assert r.json()["results"] == []
        r = a.post("/memories/search/", json={"query": "locker number", "user_id": "same"})
        assert [h["id"] for h in r.json()["results"]] == [mine["id"]]


def test_mem0_backs_chat_retrieval(
    mem0_server: ServerProcess, fake: FakeProvider, two_keys: tuple[str, str, int]
) -> None:
    key_a, _, _ = two_keys
    with _client(mem0_server, key_a) as c:
        c.post("/memories/", json={"messages": "I prefer window seats.", "user_id": "trav"})
    client = openai.OpenAI(base_url=mem0_server.url + "/v1", api_key=key_a, max_retries=0)
    client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "Book me seats on the flight."}],
        extra_body={"memory": {"user_id": "trav", "top_k": 1}},
    )
    messages = fake.last("/chat/completions")["body"]["messages"]
    assert messages[0]["role"] == "system" and "- I prefer window seats." in messages[0]["content"]


def test_mem0_failure_is_a_502_naming_mem0(
    mem0_server: ServerProcess, two_keys: tuple[str, str, int]
) -> None:
    with _client(mem0_server, two_keys[0]) as c:
        r = c.post("/memories/search/", json={"query": "please fail", "user_id": "u"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "mem0_error"
    assert "Mem0 answered 500" in r.json()["error"]["message"]


def test_mem0_backend_needs_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_BACKEND", "mem0")
    monkeypatch.delenv("MEM0_API_KEY", raising=False)
    with pytest.raises(SettingsError, match="MEMORY_BACKEND=mem0 needs MEM0_API_KEY"):
        load_settings(secrets_dir="/nonexistent", environment="development")
    monkeypatch.setenv("MEMORY_BACKEND", "cloud")
    with pytest.raises(SettingsError, match="MEMORY_BACKEND: Input should be 'local' or 'mem0'"):
        load_settings(secrets_dir="/nonexistent", environment="development")


def test_local_is_the_default_even_with_a_mem0_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMORY_BACKEND", raising=False)
    monkeypatch.setenv("MEM0_API_KEY", MEM0_KEY)
    assert load_settings(secrets_dir="/nonexistent", environment="development").memory_backend == (
        "local"
    )
