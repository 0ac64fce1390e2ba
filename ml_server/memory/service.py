"""The memory API's requests (Mem0's field names), checked, and the local backend behind them.

Adding from messages, by default with no LLM: each user message (its text) becomes one memory;
assistant, system and tool messages are context and are not stored. An exact duplicate (same
text in the same user/agent/run scope) is skipped, as Mem0 skips a fact it already holds. With
MEMORY_EXTRACTION_MODEL set (and ``infer`` not false) that model, through the router, lists
the facts to store instead. Embeddings come from the embeddings model through the router, so
every call has its usage row (endpoint ``memory.add``, ``memory.search``, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi import Request

from ml_server.api.accounting import accounted_call
from ml_server.config import Settings
from ml_server.errors import ApiError, invalid_request
from ml_server.memory.store import ENTITY_FIELDS, MemoryStore, Scope, StoreUnavailable
from ml_server.state import AppState

MAX_ID_CHARS = 200
MAX_MESSAGES = 100
MAX_TOP_K = 100
ADD_FIELDS = frozenset({"messages", "metadata", "infer", *ENTITY_FIELDS})
# Mem0 fields accepted and ignored: responses here are always v1.1 and synchronous.
IGNORED_FIELDS = frozenset({"output_format", "async_mode", "version"})
SEARCH_FIELDS = frozenset({"query", "filters", "top_k", "limit", "threshold", *ENTITY_FIELDS})
UPDATE_FIELDS = frozenset({"text", "metadata"})
EXTRACTION_PROMPT = (
    "Extract the facts worth remembering about the user from the conversation below. Answer "
    'with JSON only: {"facts": ["...", "..."]}, each fact a short sentence; '
    '{"facts": []} when there is none.'
)


@dataclass
class Ctx:
    """One API call: what the embeddings calls are accounted under."""

    state: AppState
    request: Request
    tenant: int


@dataclass
class AddRequest:
    scope: Scope
    texts: list[str]  # the user messages' text, in order
    conversation: list[dict[str, str]]  # role/content of every message (for an extractor)
    metadata: dict[str, Any] | None
    infer: bool


@dataclass
class SearchRequest:
    scope: Scope
    query: str
    top_k: int
    threshold: float | None


def _unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed - IGNORED_FIELDS)
    if unknown:
        raise invalid_request(
            f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
            param=unknown[0],
        )


def _entity(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
        raise invalid_request(
            f"'{name}' must be a non-empty string of at most {MAX_ID_CHARS} characters",
            param=name,
        )
    # PostgreSQL text holds neither NUL nor lone surrogates; JSON carries both (\u0000, \ud800).
    if "\x00" in value:
        raise invalid_request(f"'{name}' must not contain NUL characters (\\u0000)", param=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid_request(
            f"'{name}' must be valid UTF-8 text (a lone surrogate at position {exc.start})",
            param=name,
        ) from None
    return value


def parse_scope(source: dict[str, Any], *, required: bool = True) -> Scope:
    scope = Scope(**{f: _entity(source.get(f), f) for f in ENTITY_FIELDS})
    if required and not scope:
        raise invalid_request(
            "at least one of 'user_id', 'agent_id', 'run_id' is required", param="user_id"
        )
    return scope


def _metadata(body: dict[str, Any]) -> dict[str, Any] | None:
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise invalid_request("'metadata' must be an object", param="metadata")
    return meta


def _text_of(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    raise invalid_request(
        f"messages[{i}].content must be a string or an array of text parts",
        param=f"messages[{i}].content",
    )


def parse_add(body: dict[str, Any], settings: Settings) -> AddRequest:
    _unknown(body, ADD_FIELDS)
    messages = body.get("messages")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise invalid_request(
            "'messages' is required: a string or a non-empty array of {role, content}",
            status=422,
            param="messages",
        )
    if len(messages) > MAX_MESSAGES:
        raise invalid_request(f"'messages' holds at most {MAX_MESSAGES} items", param="messages")
    texts: list[str] = []
    conversation: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if not isinstance(role, str) or not role:
            raise invalid_request(
                f"messages[{i}] must be an object with a 'role' and a 'content'",
                param=f"messages[{i}].role",
            )
        content = _text_of(msg.get("content"), i).strip()
        if len(content) > settings.memory_max_chars:
            raise invalid_request(
                f"messages[{i}].content is longer than {settings.memory_max_chars} characters "
                "(MEMORY_MAX_CHARS)",
                param=f"messages[{i}].content",
            )
        conversation.append({"role": role, "content": content})
        if role == "user" and content and content not in texts:
            texts.append(content)
    infer = body.get("infer", True)
    if not isinstance(infer, bool):
        raise invalid_request("'infer' must be a boolean", param="infer")
    return AddRequest(parse_scope(body), texts, conversation, _metadata(body), infer)


def _filters_scope(filters: Any) -> dict[str, Any]:
    """Mem0's ``filters``, the part served here: equality on the entity ids, alone or under
    ``AND``."""
    problem = invalid_request(
        "'filters' supports equality on user_id, agent_id and run_id, alone or in an 'AND' "
        'list (e.g. {"AND": [{"user_id": "alice"}, {"run_id": "r1"}]})',
        param="filters",
    )
    if not isinstance(filters, dict):
        raise problem
    parts = filters["AND"] if set(filters) == {"AND"} else [filters]
    if not isinstance(parts, list):
        raise problem
    out: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, dict):
            raise problem
        for name, value in part.items():
            if name not in ENTITY_FIELDS or not isinstance(value, str) or value == "*":
                raise problem
            if name in out and out[name] != value:
                raise problem
            out[name] = value
    return out


def _int_in(body: dict[str, Any], name: str, default: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise invalid_request(f"'{name}' must be an integer in 1..{high}", param=name)
    return value


def parse_search(body: dict[str, Any], settings: Settings) -> SearchRequest:
    _unknown(body, SEARCH_FIELDS)
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise invalid_request("'query' is required: a non-empty string", status=422, param="query")
    if len(query) > settings.memory_max_chars:
        raise invalid_request(
            f"'query' is longer than {settings.memory_max_chars} characters (MEMORY_MAX_CHARS)",
            param="query",
        )
    ids = {f: body[f] for f in ENTITY_FIELDS if body.get(f) is not None}
    if body.get("filters") is not None:
        for name, value in _filters_scope(body["filters"]).items():
            if ids.get(name, value) != value:
                raise invalid_request(
                    f"'{name}' and filters.{name} disagree", param=f"filters.{name}"
                )
            ids[name] = value
    if "top_k" in body and "limit" in body:
        raise invalid_request("give 'top_k' or 'limit', not both", param="limit")
    top_k = _int_in(body, "top_k" if "top_k" in body else "limit", 10, MAX_TOP_K)
    threshold = body.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise invalid_request("'threshold' must be a number in 0..1", param="threshold")
    return SearchRequest(
        parse_scope(ids), query.strip(), top_k, None if threshold is None else float(threshold)
    )


def parse_update(body: dict[str, Any], settings: Settings) -> tuple[str | None, bool]:
    _unknown(body, UPDATE_FIELDS)
    if "text" not in body and "metadata" not in body:
        raise invalid_request("give 'text' or 'metadata' (or both)", status=422, param="text")
    new = body.get("text")
    if new is not None and (not isinstance(new, str) or not new.strip()):
        raise invalid_request("'text' must be a non-empty string", param="text")
    if new is not None and len(new) > settings.memory_max_chars:
        raise invalid_request(
            f"'text' is longer than {settings.memory_max_chars} characters (MEMORY_MAX_CHARS)",
            param="text",
        )
    _metadata(body)
    return (new.strip() if new is not None else None), "metadata" in body


def not_found(memory_id: str) -> ApiError:
    return ApiError(
        404,
        f"memory {memory_id!r} not found",
        type="invalid_request_error",
        code="memory_not_found",
        kind="client",
    )


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, type="api_error", code="memory_unavailable", retry_after="30")


def embeddings_model(settings: Settings) -> str | None:
    """MEMORY_EMBEDDINGS_MODEL; unset: fake/embed when the offline fake provider is on, else
    openai/text-embedding-3-small when OpenAI is configured, else none (the API answers 503)."""
    if settings.memory_embeddings_model:
        return settings.memory_embeddings_model
    if settings.fake_provider_enabled:
        return "fake/embed"
    if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
        return "openai/text-embedding-3-small"
    return None


class MemoryBackend(Protocol):
    async def add(self, ctx: Ctx, req: AddRequest) -> dict[str, Any]: ...
    async def search(
        self, ctx: Ctx, req: SearchRequest, *, endpoint: str = "memory.search"
    ) -> dict[str, Any]: ...
    async def page(self, ctx: Ctx, scope: Scope, page: int, size: int) -> dict[str, Any]: ...
    async def get(self, ctx: Ctx, memory_id: str) -> dict[str, Any]: ...
    async def update(
        self,
        ctx: Ctx,
        memory_id: str,
        text: str | None,
        meta: dict[str, Any] | None,
        set_meta: bool,
    ) -> dict[str, Any]: ...
    async def delete(self, ctx: Ctx, memory_id: str) -> dict[str, Any]: ...
    async def delete_all(self, ctx: Ctx, scope: Scope) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class LocalMemory:
    """Memories in this server's database (``MEMORY_BACKEND=local``, the default)."""

    def __init__(self, settings: Settings, store: MemoryStore) -> None:
        self.settings = settings
        self.store = store

    async def _ready(self) -> None:
        try:
            await self.store.ensure()
        except StoreUnavailable as exc:
            raise unavailable(str(exc)) from None

    async def embed(self, ctx: Ctx, texts: list[str], endpoint: str) -> list[list[float]]:
        model = embeddings_model(self.settings)
        if model is None:
            raise unavailable(
                "the memory layer needs an embeddings model: set MEMORY_EMBEDDINGS_MODEL "
                "(e.g. openai/text-embedding-3-small)"
            )
        dims = self.settings.memory_embedding_dimensions
        state = ctx.state
        route = state.router.resolve(model)
        body = {"model": model, "input": texts, "dimensions": dims}
        started = time.perf_counter()
        call = state.router.embeddings(route, body)
        result = await accounted_call(
            state, ctx.request, route, call, endpoint=endpoint, started=started, body=body
        )
        data = orjson.loads(result.body).get("data") or []
        vectors = [d.get("embedding") for d in sorted(data, key=lambda d: d.get("index", 0))]
        if len(vectors) != len(texts) or any(
            not isinstance(v, list) or len(v) != dims for v in vectors
        ):
            got = len(vectors[0]) if vectors and isinstance(vectors[0], list) else "no"
            raise ApiError(
                502,
                f"the embeddings model {model!r} answered {len(vectors)} vector(s) of {got} "
                f"dimensions; MEMORY_EMBEDDING_DIMENSIONS is {dims} (the model must accept "
                "'dimensions' or produce that many)",
                code="bad_embeddings",
            )
        return [[float(x) for x in v] for v in vectors if isinstance(v, list)]

    async def _extract(self, ctx: Ctx, req: AddRequest) -> list[str]:
        model = self.settings.memory_extraction_model
        if not model or not req.infer:
            return req.texts
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in req.conversation)
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": EXTRACTION_PROMPT},
                {"role": "user", "content": transcript},
            ],
            "temperature": 0,
        }
        state = ctx.state
        route = state.router.resolve(model)
        started = time.perf_counter()
        result = await accounted_call(
            state,
            ctx.request,
            route,
            state.router.chat(route, body),
            endpoint="memory.extract",
            started=started,
            body=body,
        )
        answer = ((orjson.loads(result.body).get("choices") or [{}])[0].get("message") or {}).get(
            "content"
        ) or ""
        try:
            facts = orjson.loads(answer.strip().removeprefix("```json").strip("`").strip())
            facts = facts["facts"] if isinstance(facts, dict) else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            facts = None
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise ApiError(
                502,
                f'the extraction model {model!r} did not answer {{"facts": [...]}} '
                "(MEMORY_EXTRACTION_MODEL); nothing was stored",
                code="bad_extraction",
            )
        out: list[str] = []
        for fact in facts:
            fact = fact.strip()[: self.settings.memory_max_chars]
            if fact and fact not in out:
                out.append(fact)
        return out

    async def add(self, ctx: Ctx, req: AddRequest) -> dict[str, Any]:
        await self._ready()
        texts = await self._extract(ctx, req)
        from ml_server.memory.store import memory_hash

        known = await self.store.existing_hashes(
            ctx.tenant, req.scope, [memory_hash(t) for t in texts]
        )
        texts = [t for t in texts if memory_hash(t) not in known]
        if not texts:
            return {"results": []}
        vectors = await self.embed(ctx, texts, "memory.add")
        added = await self.store.add(
            ctx.tenant, req.scope, list(zip(texts, vectors, strict=True)), req.metadata
        )
        return {
            "results": [{"id": m.id, "memory": m.memory, "event": "ADD"} for m in added],
        }

    async def search(
        self, ctx: Ctx, req: SearchRequest, *, endpoint: str = "memory.search"
    ) -> dict[str, Any]:
        await self._ready()
        [vec] = await self.embed(ctx, [req.query], endpoint)
        found = await self.store.search(
            ctx.tenant, req.scope, vec, top_k=req.top_k, threshold=req.threshold
        )
        return {"results": [m.to_api() for m in found]}

    async def page(self, ctx: Ctx, scope: Scope, page: int, size: int) -> dict[str, Any]:
        await self._ready()
        total, rows = await self.store.page(ctx.tenant, scope, limit=size, offset=(page - 1) * size)
        return {"count": total, "results": [m.to_api() for m in rows]}

    async def get(self, ctx: Ctx, memory_id: str) -> dict[str, Any]:
        await self._ready()
        found = await self.store.get(ctx.tenant, memory_id)
        if found is None:
            raise not_found(memory_id)
        return found.to_api()

    async def update(
        self,
        ctx: Ctx,
        memory_id: str,
        text: str | None,
        meta: dict[str, Any] | None,
        set_meta: bool,
    ) -> dict[str, Any]:
        await self._ready()
        if await self.store.get(ctx.tenant, memory_id) is None:
            raise not_found(memory_id)  # before paying for an embedding
        vec = (await self.embed(ctx, [text], "memory.update"))[0] if text is not None else None
        updated = await self.store.update(
            ctx.tenant, memory_id, memory=text, vec=vec, metadata=meta, set_metadata=set_meta
        )
        if updated is None:
            raise not_found(memory_id)
        return updated.to_api()

    async def delete(self, ctx: Ctx, memory_id: str) -> dict[str, Any]:
        await self._ready()
        if not await self.store.delete(ctx.tenant, memory_id):
            raise not_found(memory_id)
        return {"message": "Memory deleted successfully!"}

    async def delete_all(self, ctx: Ctx, scope: Scope) -> dict[str, Any]:
        await self._ready()
        n = await self.store.delete_all(ctx.tenant, scope)
        return {"message": "Memories deleted successfully!", "deleted": n}

    async def close(self) -> None:
        return None
