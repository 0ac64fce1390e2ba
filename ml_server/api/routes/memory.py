"""The memory API, Mem0's paths and shapes (docs/ml-server.md, Memory), scoped to the calling key.

POST   /v1/memories/           add from messages      {"results": [{"id", "memory", "event"}]}
POST   /v1/memories/search/    search by query         {"results": [memory + "score"]}
GET    /v1/memories/           list (user_id/agent_id/run_id, page, page_size)
GET    /v1/memories/{id}/      one memory
PUT    /v1/memories/{id}/      new text and/or metadata
DELETE /v1/memories/{id}/      delete one
DELETE /v1/memories/           delete all of a user/agent/run

Paths are served with and without the trailing slash.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ml_server.api.deps import BodyDep, KeyDep, StateDep
from ml_server.db.keys import KeyInfo
from ml_server.errors import invalid_request
from ml_server.memory import backend
from ml_server.memory.service import (
    Ctx,
    MemoryBackend,
    parse_add,
    parse_scope,
    parse_search,
    parse_update,
)
from ml_server.memory.store import ENTITY_FIELDS
from ml_server.state import AppState

router = APIRouter(prefix="/v1", tags=["memory"])
MAX_PAGE_SIZE = 1000
LIST_PARAMS = frozenset({"page", "page_size", *ENTITY_FIELDS})


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _open(request: Request, state: AppState, key: KeyInfo) -> tuple[MemoryBackend, Ctx]:
    return backend(request.app, state), Ctx(state, request, key.id)


def _list_scope(request: Request) -> tuple[dict[str, Any], int, int]:
    params = dict(request.query_params)
    unknown = sorted(set(params) - LIST_PARAMS)
    if unknown:
        raise invalid_request(
            f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(LIST_PARAMS))}",
            param=unknown[0],
        )
    numbers = []
    for name, default, high in (("page", 1, 1_000_000), ("page_size", 100, MAX_PAGE_SIZE)):
        raw = params.pop(name, str(default))
        if not raw.isdigit() or not 1 <= int(raw) <= high:
            raise invalid_request(f"'{name}' must be an integer in 1..{high}", param=name)
        numbers.append(int(raw))
    return params, numbers[0], numbers[1]


@router.post("/memories/")
@router.post("/memories", include_in_schema=False)
async def add_memories(request: Request, state: StateDep, key: KeyDep, body: BodyDep) -> Response:
    req = parse_add(body, state.settings)
    mem, ctx = _open(request, state, key)
    return _json(await mem.add(ctx, req))


@router.post("/memories/search/")
@router.post("/memories/search", include_in_schema=False)
async def search_memories(
    request: Request, state: StateDep, key: KeyDep, body: BodyDep
) -> Response:
    req = parse_search(body, state.settings)
    mem, ctx = _open(request, state, key)
    return _json(await mem.search(ctx, req))


@router.get("/memories/")
@router.get("/memories", include_in_schema=False)
async def list_memories(request: Request, state: StateDep, key: KeyDep) -> Response:
    params, page, size = _list_scope(request)
    scope = parse_scope(params)
    mem, ctx = _open(request, state, key)
    return _json(await mem.page(ctx, scope, page, size))


@router.delete("/memories/")
@router.delete("/memories", include_in_schema=False)
async def delete_memories(request: Request, state: StateDep, key: KeyDep) -> Response:
    params, _, _ = _list_scope(request)
    scope = parse_scope(params)
    mem, ctx = _open(request, state, key)
    return _json(await mem.delete_all(ctx, scope))


@router.get("/memories/{memory_id}/")
@router.get("/memories/{memory_id}", include_in_schema=False)
async def get_memory(request: Request, state: StateDep, key: KeyDep, memory_id: str) -> Response:
    mem, ctx = _open(request, state, key)
    return _json(await mem.get(ctx, memory_id))


@router.put("/memories/{memory_id}/")
@router.put("/memories/{memory_id}", include_in_schema=False)
async def update_memory(
    request: Request, state: StateDep, key: KeyDep, body: BodyDep, memory_id: str
) -> Response:
    text, set_meta = parse_update(body, state.settings)
    mem, ctx = _open(request, state, key)
    return _json(await mem.update(ctx, memory_id, text, body.get("metadata"), set_meta))


@router.delete("/memories/{memory_id}/")
@router.delete("/memories/{memory_id}", include_in_schema=False)
async def delete_memory(request: Request, state: StateDep, key: KeyDep, memory_id: str) -> Response:
    mem, ctx = _open(request, state, key)
    return _json(await mem.delete(ctx, memory_id))
