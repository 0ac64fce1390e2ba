"""A fake LLM provider on 127.0.0.1: OpenAI (chat, embeddings, models) and Anthropic Messages.

Behaviour is chosen per request through the model name (any provider prefix):

- ``gpt-slow-300``: answer after 300 ms;
- ``x-status-503``: that HTTP status with the provider's error body;
- ``x-ratelimit-7``: 429 with ``Retry-After: 7``;
- ``x-hang``: never answer;
- ``x-firstdelay-800``: stream headers at once, first event after 800 ms;
- ``x-tools``: answer with a tool call;
- ``x-flaky-2-status-503``: the failure words (status, ratelimit, hang, slow) apply only to the
  first 2 requests naming this exact model; later ones succeed (``x-flaky-1-slow-900``: a first
  attempt that times out, then a fast one);
- ``x-chunkdelay-100``: stream chunks 100 ms apart;
- ``x-breakafter-2``: a stream that drops the connection after 2 content chunks.
- usage the provider reports (OpenAI format): ``ptok-3000000000`` sets ``prompt_tokens``,
  ``cached-40`` ``prompt_tokens_details.cached_tokens``, ``reasoning-7``
  ``completion_tokens_details.reasoning_tokens``, ``thoughts-9`` adds 9 to ``total_tokens`` only
  (Gemini's thinking tokens), ``nousage`` reports none;
- ``x-nodone``: a stream that ends (cleanly) without ``data: [DONE]``;
- ``x-streamerror-2``: a stream (HTTP 200) that sends ``data: {"error": ...}`` (an
  ``overloaded_error``) after 2 content chunks (0: before any content) and ends;
- ``x-ctxlen``: 400 ``context_length_exceeded`` (with ``param`` and an ``x-request-id``);
- ``x-geminilist``: 400 with Gemini's list-shaped error body;
- ``x-keyleak``: 401 whose message echoes a (fake) key fragment, as OpenAI's does.

Azure mode (paths under ``/azure/``, Azure AI Model Inference): the key in ``api-key``, the
``api-version`` query parameter required (400 without), and parameters outside that API's chat
schema refused with 422 unless the ``extra-parameters`` header is ``drop`` (removed before the
model sees them) or ``pass-through``; ``stream_options.include_usage`` gives the final usage chunk,
as on OpenAI.

An API key containing ``rejected`` gets 401. Every request is recorded (method, path, query,
headers, JSON body): ``GET /_requests`` returns them, ``DELETE /_requests`` clears them;
in-process, use ``.requests``.

Run standalone: ``python -m ml_server.tests.fake_provider --port 8099``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import threading
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

_NUM = re.compile(
    r"(slow|status|ratelimit|firstdelay|flaky|chunkdelay|breakafter|ptok|cached|reasoning|thoughts"
    r"|streamerror)"
    r"-(\d+)"
)
_FAILURES = ("hang", "slow", "ratelimit", "status", "streamerror", "nodone")
# Azure AI Model Inference chat parameters (its "Create chat completion" reference); others are
# "extra parameters".
AZURE_CHAT_PARAMS = frozenset(
    {
        "messages",
        "model",
        "frequency_penalty",
        "presence_penalty",
        "max_tokens",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_p",
    }
)


def _directives(model: str) -> dict[str, int]:
    found = {k: int(v) for k, v in _NUM.findall(model)}
    for flag in ("hang", "tools", "nousage", "nodone", "ctxlen", "geminilist", "keyleak"):
        if re.search(rf"(^|[-/_]){flag}($|[-/_])", model):
            found[flag] = 1
    return found


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


class FakeProvider:
    """The fake provider server; ``start()`` runs it on a background thread with its own loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}  # model -> requests so far (for ``flaky-N``)
        self._cache_keys: set[bytes] = set()  # prompt-cache prefixes written (Anthropic)
        self.stored: dict[str, dict[str, Any]] = {}  # Responses API: id -> response, input
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def clear(self) -> None:
        self.requests.clear()

    def last(self, path_suffix: str) -> dict[str, Any]:
        for r in reversed(self.requests):
            if str(r["path"]).endswith(path_suffix):
                found: dict[str, Any] = r
                return found
        raise AssertionError(f"fake provider got no request ending in {path_suffix}")

    # --- server -------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_requests", self._list)
        app.router.add_delete("/_requests", self._clear)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start_async(self) -> None:
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", [])
            self.port = int(sockets[0].getsockname()[1])

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> FakeProvider:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.run_until_complete(self.start_async())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            pending = asyncio.all_tasks(loop)  # e.g. handlers still "hanging"
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake provider did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _list(self, _: web.Request) -> web.Response:
        return _json(self.requests)

    async def _clear(self, _: web.Request) -> web.Response:
        self.requests.clear()
        return _json({"cleared": True})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
            }
        )
        path = request.path
        anthropic = path.endswith(("/messages", "/messages/count_tokens"))
        model = str((body or {}).get("model", "")) if isinstance(body, dict) else ""
        d = _directives(model)
        auth_error = self._check_auth(request, anthropic)
        if auth_error is not None:
            return auth_error
        if path.startswith("/azure/") and isinstance(body, dict):
            refusal = _azure_check(request, body)
            if refusal is not None:
                return refusal
        if "flaky" in d:
            seen = self._seen[model] = self._seen.get(model, 0) + 1
            if seen > d["flaky"]:
                d = {k: v for k, v in d.items() if k not in _FAILURES}
        if "hang" in d:
            await asyncio.sleep(3600)
        if "slow" in d:
            await asyncio.sleep(d["slow"] / 1000)
        if "ratelimit" in d:
            return self._error(anthropic, 429, "rate limited", {"Retry-After": str(d["ratelimit"])})
        if "status" in d:
            return self._error(anthropic, d["status"], f"simulated HTTP {d['status']}")
        if "ctxlen" in d:
            err = {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
            return _json({"error": err}, 400, {"x-request-id": "req_fake_ctx_123"})
        if "geminilist" in d:
            gem = {
                "code": 400,
                "message": "Invalid JSON payload: unknown field",
                "status": "INVALID_ARGUMENT",
            }
            return _json([{"error": gem}], 400)
        if "keyleak" in d:
            leak = {
                "message": "Incorrect API key provided: sk-proj-ab12****************wxyz. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
            return _json({"error": leak}, 401)
        stored = re.fullmatch(r".*/responses/([^/]+)(/input_items|/cancel)?", path)
        if stored is not None:
            return self._stored_response(request.method, stored[1], stored[2] or "")
        if request.method == "GET" and path.endswith("/models"):
            return _json({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        if not isinstance(body, dict):
            return self._error(anthropic, 400, "body must be a JSON object")
        if path.endswith("/responses") and isinstance(body, dict):
            return await _openai_responses(request, body, self.stored)
        if anthropic and not _well_formed_messages(body):
            return self._error(True, 400, "messages: each must be {role, content}")
        if path.endswith("/messages/count_tokens"):
            return _json({"input_tokens": _rich_usage(body, [], set())["input_tokens"]})
        if anthropic and _wants_rich(model, body):
            return await self._anthropic_rich(request, body, model)
        if anthropic:
            return await self._anthropic(request, body, d)
        if path.endswith("/chat/completions"):
            return await self._openai_chat(request, body, d)
        if path.endswith("/embeddings"):
            return self._openai_embeddings(body)
        return self._error(anthropic, 404, f"unknown path {path}")

    def _stored_response(self, method: str, rid: str, suffix: str) -> web.Response:
        """OpenAI's retrieve / delete / input_items / cancel of a stored response."""
        item = self.stored.get(rid)
        if item is None:
            err = {"message": f"Response with id '{rid}' not found.",
                   "type": "invalid_request_error", "param": None, "code": None}  # fmt: skip
            return _json({"error": err}, 404)
        if method == "DELETE" and not suffix:
            del self.stored[rid]
            return _json({"id": rid, "object": "response", "deleted": True})
        if suffix == "/input_items":
            data = [{"id": f"msg_in_{i}", "type": "message", "role": "user", "status": "completed",
                     "content": [{"type": "input_text", "text": t}]}
                    for i, t in enumerate(item["input"])]  # fmt: skip
            return _json({"object": "list", "data": data, "has_more": False,
                          "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None})  # fmt: skip
        if suffix == "/cancel":
            return _json({**item["response"], "status": "cancelled"})
        return _json(item["response"])

    def _check_auth(self, request: web.Request, anthropic: bool) -> web.Response | None:
        bearer = request.headers.get("Authorization", "")
        bearer = bearer[7:] if bearer.startswith("Bearer ") else ""
        if anthropic:
            # x-api-key is the documented form; recent official SDKs send a Bearer token instead.
            key = request.headers.get("x-api-key", "") or bearer
            if not key or not request.headers.get("anthropic-version"):
                return self._error(True, 401, "x-api-key and anthropic-version are required")
        else:
            key = bearer or request.headers.get("api-key", "")
            if not key:
                return self._error(False, 401, "missing credentials")
        if "rejected" in key:
            return self._error(anthropic, 401, "invalid x-api-key" if anthropic else "bad key")
        return None

    @staticmethod
    def _error(
        anthropic: bool, status: int, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        if anthropic:
            kind = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "api_error")
            data: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            data = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
        return _json(data, status, headers)

    # --- OpenAI --------------------------------------------------------------------------------
    async def _openai_chat(
        self, request: web.Request, body: dict[str, Any], d: dict[str, int]
    ) -> web.StreamResponse:
        model = body.get("model", "")
        text = "echo: " + _last_user_text(body.get("messages") or [])
        prompt = sum(_words(_text(m.get("content"))) for m in body.get("messages") or [])
        prompt = d.get("ptok", prompt)
        usage: dict[str, Any] | None = {
            "prompt_tokens": prompt,
            "completion_tokens": _words(text),
            "total_tokens": prompt + _words(text) + d.get("thoughts", 0),
        }
        assert usage is not None
        if "cached" in d:
            usage["prompt_tokens_details"] = {"cached_tokens": d["cached"]}
        if "reasoning" in d:
            usage["completion_tokens_details"] = {"reasoning_tokens": d["reasoning"]}
        if "nousage" in d:
            usage = None
        created = int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            finish = "stop"
            if "tools" in d:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                        }
                    ],
                }
                finish = "tool_calls"
            return _json(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if "firstdelay" in d:
            await asyncio.sleep(d["firstdelay"] / 1000)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None
            return b"data: " + orjson.dumps(data) + b"\n\n"

        await resp.write(chunk({"role": "assistant", "content": ""}))
        for i, word in enumerate(text.split(" ")):
            if "streamerror" in d and i >= d["streamerror"]:
                err = {"message": "Overloaded", "type": "overloaded_error"}
                await resp.write(b"data: " + orjson.dumps({"error": err}) + b"\n\n")
                await resp.write_eof()
                return resp
            if "breakafter" in d and i >= d["breakafter"]:
                if request.transport is not None:
                    # The connection drops mid-stream (no terminating chunk). close(), not abort():
                    # abort() discards what is still buffered, so the chunks written before the
                    # drop would reach the client only sometimes (a flaky test). The pause lets
                    # the gateway read them first: aiohttp's StreamReader.readany raises a
                    # connection error it has seen before returning data still buffered, so
                    # chunks arriving together with the drop are lost (a race, not the point).
                    await asyncio.sleep(0.05)
                    request.transport.close()
                return resp
            if "chunkdelay" in d:
                await asyncio.sleep(d["chunkdelay"] / 1000)
            await resp.write(chunk({"content": word if i == 0 else " " + word}))
        await resp.write(chunk({}, "stop"))
        if include_usage and usage is not None:
            final = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await resp.write(b"data: " + orjson.dumps(final) + b"\n\n")
        if "nodone" not in d:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    @staticmethod
    def _openai_embeddings(body: dict[str, Any]) -> web.Response:
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dims = int(body.get("dimensions") or 4)
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append(
                {"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:dims]]}
            )
        tokens = sum(_words(str(x)) for x in items)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # --- Anthropic ------------------------------------------------------------------------------
    async def _anthropic(
        self, request: web.Request, body: dict[str, Any], d: dict[str, int]
    ) -> web.StreamResponse:
        if not isinstance(body.get("max_tokens"), int):
            return self._error(True, 400, "max_tokens: Field required")
        messages = body.get("messages") or []
        for m in messages:
            if m.get("role") not in ("user", "assistant"):
                return self._error(True, 400, f"messages: unexpected role {m.get('role')!r}")
        text = "echo: " + _last_user_text(messages)
        input_tokens = sum(_words(_text(m.get("content"))) for m in messages)
        model = body.get("model")
        if "tools" in d:
            content: list[dict[str, Any]] = [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
            ]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": text}]
            stop = "end_turn"
        if not body.get("stream"):
            return _json(
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": _words(text)},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            payload = orjson.dumps({"type": name, **data})
            await resp.write(b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n")

        start_msg: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        await event("message_start", {"message": start_msg})
        if "firstdelay" in d:
            await asyncio.sleep(d["firstdelay"] / 1000)
        await event("ping", {})
        for index, block in enumerate(content):
            if block["type"] == "text":
                await event(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "text", "text": ""}},
                )
                for i, word in enumerate(block["text"].split(" ")):
                    piece = word if i == 0 else " " + word
                    await event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": piece}},
                    )
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                await event("content_block_start", {"index": index, "content_block": start})
                args = orjson.dumps(block["input"]).decode()
                for part in (args[:4], args[4:]):
                    await event(
                        "content_block_delta",
                        {
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": part},
                        },
                    )
            await event("content_block_stop", {"index": index})
        await event(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": _words(text)},
            },
        )
        await event("message_stop", {})
        await resp.write_eof()
        return resp

    # --- Anthropic, the fuller model (thinking, structured output, caching, stream errors) -------
    async def _anthropic_rich(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        problem = _rich_problem(body)
        if problem is not None:
            return self._error(True, 400, problem)
        seen = self._seen.get(model, 0)
        flaky = re.search(r"flaky-(\d+)", model)
        failing = flaky is None or seen <= int(flaky.group(1))
        stream_error = re.search(r"streamerror-(\d+)", model)
        error_after = int(stream_error.group(1)) if stream_error and failing else None
        content, stop = _rich_answer(body, model)
        usage = _rich_usage(body, content, self._cache_keys)
        if not body.get("stream"):
            return _json(
                {
                    "id": "msg_rich",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model"),
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            payload = orjson.dumps({"type": name, **data})
            await resp.write(b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n")

        async def fail() -> web.StreamResponse:
            # What Anthropic does when overloaded mid-request: an error event in the 200 stream.
            err = {"type": "overloaded_error", "message": "Overloaded"}
            await event("error", {"error": err})
            await resp.write_eof()
            return resp

        start_usage = {k: v for k, v in usage.items() if k != "output_tokens_details"}
        start: dict[str, Any] = {
            "id": "msg_rich", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**start_usage, "output_tokens": 1},
        }  # fmt: skip
        await event("message_start", {"message": start})
        await event("ping", {})
        if error_after == 0:
            return await fail()
        deltas = 0
        for index, block in enumerate(content):
            kind = block["type"]
            first: dict[str, Any]
            pieces: list[dict[str, Any]]
            if kind == "thinking":
                first = {"type": "thinking", "thinking": "", "signature": ""}
                pieces = [
                    {"type": "thinking_delta", "thinking": w} for w in _split(block["thinking"])
                ] + [{"type": "signature_delta", "signature": block["signature"]}]
            elif kind == "text":
                first = {"type": "text", "text": ""}
                pieces = [{"type": "text_delta", "text": w} for w in _split(block["text"])]
            else:
                first = {**block, "input": {}}
                args = orjson.dumps(block["input"]).decode()
                pieces = [
                    {"type": "input_json_delta", "partial_json": part}
                    for part in (args[:3], args[3:])
                ]
            await event("content_block_start", {"index": index, "content_block": first})
            for piece in pieces:
                await event("content_block_delta", {"index": index, "delta": piece})
                deltas += 1
                if error_after is not None and deltas >= error_after:
                    return await fail()
            await event("content_block_stop", {"index": index})
        await event(
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage},
        )
        await event("message_stop", {})
        await resp.write_eof()
        return resp


_RICH_WORDS = ("rich", "streamerror", "pause")


def _azure_check(request: web.Request, body: dict[str, Any]) -> web.Response | None:
    """Azure AI Model Inference's checks; drops extra parameters from ``body`` when told to."""
    if "api-version" not in request.query:
        return _json({"error": {"code": "BadRequest", "message": "api-version is required"}}, 400)
    extra = sorted(k for k in body if k not in AZURE_CHAT_PARAMS)
    mode = request.headers.get("extra-parameters", "error")
    if extra and mode == "drop":
        for k in extra:
            del body[k]
    elif extra and mode != "pass-through":
        msg = (
            f"Extra parameters {extra} are not allowed when extra-parameters is not set or set "
            "to be 'error'. Set extra-parameters to 'drop' or 'pass-through'."
        )
        return _json({"error": {"code": "Extra parameters not allowed", "message": msg}}, 422)
    return None


def _well_formed_messages(body: dict[str, Any]) -> bool:
    """Anthropic answers 400 to messages that are not {role, content} objects."""
    messages = body.get("messages")
    return isinstance(messages, list) and all(
        isinstance(m, dict)
        and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str | list)
        and all(isinstance(b, dict) for b in m["content"] if isinstance(m["content"], list))
        for m in messages
    )


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _wants_rich(model: str, body: dict[str, Any]) -> bool:
    """Requests that use what the simple echo does not model."""
    if any(w in model for w in _RICH_WORDS):
        return True
    if any(k in body for k in ("thinking", "output_config", "cache_control")):
        return True
    if isinstance(body.get("system"), list):
        return True
    for m in body.get("messages") or []:
        for b in _blocks(m.get("content") if isinstance(m, dict) else None):
            if b.get("type") in ("tool_result", "document", "thinking") or "cache_control" in b:
                return True
    return False


def fake_signature(thinking: str) -> str:
    """The fake's thinking signature: checked when the block comes back on a later turn."""
    return "sig-" + hashlib.sha256(thinking.encode()).hexdigest()[:24]


def _thinking_on(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _rich_problem(body: dict[str, Any]) -> str | None:
    """The 400s the real API gives for what the translation must get right."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int):
        return "max_tokens: Field required"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or budget >= max_tokens:
            return "thinking.budget_tokens: must be >= 1024 and less than max_tokens"
    if _thinking_on(body) and body.get("temperature") not in (None, 1):
        return "temperature may only be set to 1 when thinking is enabled"
    if "temperature" in body and "top_p" in body:
        return "temperature and top_p cannot both be specified for this model"
    tool_ids: set[str] = set()
    for i, m in enumerate(body.get("messages") or []):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: unexpected role {m.get('role')!r}"
        blocks = _blocks(m.get("content"))
        if m["role"] == "assistant":
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            tool_ids.update(str(b.get("id")) for b in uses)
            if uses and _thinking_on(body):
                head = blocks[0]
                if head.get("type") != "thinking":
                    return (
                        f"messages.{i}.content.0.type: Expected `thinking` or "
                        "`redacted_thinking`, but found `tool_use`. When `thinking` is enabled, "
                        "a final `assistant` message must start with a thinking block"
                    )
                if head.get("signature") != fake_signature(str(head.get("thinking", ""))):
                    return f"messages.{i}.content.0: Invalid `signature` in `thinking` block"
        for b in blocks:
            if b.get("type") == "tool_result" and b.get("tool_use_id") not in tool_ids:
                return f"messages.{i}: tool_result for unknown tool_use_id {b.get('tool_use_id')}"
    return None


def _sample(schema: Any, defs: dict[str, Any]) -> Any:
    """A value that satisfies a (structured-output style) JSON schema."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return _sample(defs.get(str(schema["$ref"]).rsplit("/", 1)[-1]), defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _sample(schema[key][0], defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _sample(v, defs) for k, v in props.items()}
    if kind == "array":
        return [_sample(schema.get("items"), defs)]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(str(kind))


def _last_user_words(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            words = []
            for b in _blocks(m.get("content")):
                if b.get("type") == "text":
                    words.append(str(b.get("text", "")))
                elif b.get("type") == "tool_result":
                    for x in _blocks(b.get("content")):
                        words.append(str(x.get("text", "")) if "text" in x else f"[{x['type']}]")
                elif b.get("type") in ("image", "document"):
                    words.append(f"[{b['type']}]")
            return " ".join(w for w in words if w)
    return ""


def _rich_answer(body: dict[str, Any], model: str) -> tuple[list[dict[str, Any]], str]:
    messages = body.get("messages") or []
    said = _last_user_words(messages)
    content: list[dict[str, Any]] = []
    if _thinking_on(body):
        thought = f"Thinking about: {said}"
        content.append(
            {"type": "thinking", "thinking": thought, "signature": fake_signature(thought)}
        )
    last = messages[-1] if messages else {}
    answered_tool = any(b.get("type") == "tool_result" for b in _blocks(last.get("content")))
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if tools and not answered_tool and choice.get("type") != "none":
        tool = tools[0]
        if choice.get("type") == "tool":
            tool = next((t for t in tools if t.get("name") == choice.get("name")), tool)
        schema = tool.get("input_schema") or {}
        content.append(
            {"type": "tool_use", "id": "toolu_rich_1", "name": tool.get("name"),
             "input": _sample(schema, schema.get("$defs") or {})}
        )  # fmt: skip
        return content, "tool_use"
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema") or {}
        text = orjson.dumps(_sample(schema, schema.get("$defs") or {})).decode()
    else:
        text = f"echo: {said}"
    content.append({"type": "text", "text": text})
    return content, "pause_turn" if "pause" in model else "end_turn"


def _has_cache_marker(body: dict[str, Any]) -> bool:
    if "cache_control" in body:
        return True
    system = body.get("system")
    parts: list[Any] = list(system) if isinstance(system, list) else []
    parts += body.get("tools") or []
    for m in body.get("messages") or []:
        parts += _blocks(m.get("content"))
    return any(isinstance(p, dict) and "cache_control" in p for p in parts)


def _rich_usage(
    body: dict[str, Any], content: list[dict[str, Any]], cache_keys: set[bytes]
) -> dict[str, Any]:
    """Prompt caching as Anthropic reports it: the first request with a marker writes the
    cache (cache_creation_input_tokens), the same prefix again reads it."""
    prompt = sum(
        _words(_text(m.get("content")) or str(m.get("content"))) for m in body["messages"]
    ) + (_words(str(body["system"])) if body.get("system") else 0)
    read = write = 0
    if _has_cache_marker(body):
        key = hashlib.sha256(
            orjson.dumps([body.get("system"), body.get("tools"), body["messages"][:1]])
        ).digest()
        if key in cache_keys:
            read = prompt
        else:
            write = prompt
            cache_keys.add(key)
    thinking = sum(_words(b["thinking"]) for b in content if b["type"] == "thinking")
    visible = sum(
        _words(b.get("text") or orjson.dumps(b.get("input")).decode())
        for b in content
        if b["type"] != "thinking"
    )
    usage: dict[str, Any] = {
        "input_tokens": prompt - read - write,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": thinking + visible,
    }
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    return usage


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


async def _openai_responses(
    request: web.Request, body: dict[str, Any], stored: dict[str, dict[str, Any]]
) -> web.StreamResponse:
    """OpenAI's Responses API: a message echoing the last user input, plain or streamed; kept
    in ``stored`` unless ``store: false``."""
    items = body.get("input")
    if isinstance(items, str):
        said = items
    else:
        users = [i for i in items or [] if isinstance(i, dict) and i.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        said = (
            content
            if isinstance(content, str)
            else " ".join(str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
        )
    text = f"echo: {said}"
    prompt, completion = _words(said), _words(text)
    usage = {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }  # fmt: skip
    message = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
    rid = "resp_" + uuid.uuid4().hex
    response: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": body.get("model"), "output": [message],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage,
    }  # fmt: skip
    if body.get("store") is not False:
        stored[rid] = {"response": response, "input": [said]}
    if not body.get("stream"):
        return _json(response)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    seq = 0

    async def event(data: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        payload = orjson.dumps({**data, "sequence_number": seq})
        await resp.write(b"event: " + str(data["type"]).encode() + b"\ndata: " + payload + b"\n\n")

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    await event({"type": "response.created", "response": started})
    for piece in _split(text):
        await event({"type": "response.output_text.delta", "item_id": "msg_fake",
                     "output_index": 0, "content_index": 0, "delta": piece})  # fmt: skip
    await event({"type": "response.completed", "response": response})
    await resp.write_eof()
    return resp


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic provider for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    web.run_app(
        FakeProvider(args.host, args.port).make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda *_: None,
    )


if __name__ == "__main__":
    main()
