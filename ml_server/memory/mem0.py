"""``MEMORY_BACKEND=mem0``: the same memory API served by Mem0's cloud (MEM0_BASE_URL, default
https://api.mem0.ai) with ``Authorization: Token <MEM0_API_KEY>``.

One Mem0 account serves every API key of this server, so each key's entity ids are namespaced
on the way out (``user_id`` "alice" of key 7 is "hsk7:alice" at Mem0) and the prefix is removed
on the way back; a memory read, changed or deleted by id is first fetched and refused (404)
unless it carries the caller's prefix. Mem0 does its own extraction and embedding (its model,
its bill): no usage row here for those.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from ml_server.config import Settings
from ml_server.errors import ApiError
from ml_server.memory.service import AddRequest, Ctx, SearchRequest, not_found
from ml_server.memory.store import ENTITY_FIELDS, Scope


def prefix(tenant: int) -> str:
    return f"hsk{tenant}:"


class Mem0Memory:
    def __init__(self, settings: Settings) -> None:
        if settings.mem0_api_key is None:
            raise ValueError("MEMORY_BACKEND=mem0 needs MEM0_API_KEY")
        self.base = settings.mem0_base_url.rstrip("/")
        self._auth = f"Token {settings.mem0_api_key.get_secret_value()}"
        self._timeout = aiohttp.ClientTimeout(total=settings.mem0_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        try:
            async with self._session.request(
                method, self.base + path, data=data, params=params, headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ApiError(
                502, f"Mem0 is unreachable ({type(exc).__name__})", code="mem0_unreachable"
            ) from None
        if status == 404:
            raise not_found(path.rstrip("/").rsplit("/", 1)[-1])
        if status >= 400:
            detail = raw[:300].decode("utf-8", "replace")
            raise ApiError(502, f"Mem0 answered {status}: {detail}", code="mem0_error")
        return orjson.loads(raw) if raw else {}

    @staticmethod
    def _ids(tenant: int, scope: Scope) -> dict[str, str]:
        return {name: prefix(tenant) + value for name, value in scope.items()}

    @staticmethod
    def _mine(tenant: int, item: dict[str, Any]) -> dict[str, Any] | None:
        """The item with the caller's prefix removed; None when it is not the caller's."""
        p = prefix(tenant)
        out = dict(item)
        owned = False
        for name in ENTITY_FIELDS:
            value = item.get(name)
            if isinstance(value, str):
                if not value.startswith(p):
                    return None
                out[name] = value[len(p) :]
                owned = True
        return out if owned else None

    @staticmethod
    def _items(answer: Any) -> list[dict[str, Any]]:
        items = answer.get("results", []) if isinstance(answer, dict) else answer
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def add(self, ctx: Ctx, req: AddRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": req.conversation,
            **self._ids(ctx.tenant, req.scope),
            "infer": req.infer,
            "output_format": "v1.1",
            "async_mode": False,
        }
        if req.metadata is not None:
            body["metadata"] = req.metadata
        answer = await self._call("POST", "/v1/memories/", body=body)
        results = []
        for item in self._items(answer):
            memory = item.get("memory") or (item.get("data") or {}).get("memory")
            results.append({"id": item.get("id"), "memory": memory, "event": item.get("event")})
        return {"results": results}

    async def search(
        self, ctx: Ctx, req: SearchRequest, *, endpoint: str = "memory.search"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query": req.query,
            **self._ids(ctx.tenant, req.scope),
            "top_k": req.top_k,
            "output_format": "v1.1",
        }
        if req.threshold is not None:
            body["threshold"] = req.threshold
        answer = await self._call("POST", "/v1/memories/search/", body=body)
        mine = [self._mine(ctx.tenant, i) for i in self._items(answer)]
        return {"results": [m for m in mine if m is not None][: req.top_k]}

    async def page(self, ctx: Ctx, scope: Scope, page: int, size: int) -> dict[str, Any]:
        params = {**self._ids(ctx.tenant, scope), "page": str(page), "page_size": str(size)}
        answer = await self._call("GET", "/v1/memories/", params=params)
        mine = [m for i in self._items(answer) if (m := self._mine(ctx.tenant, i)) is not None]
        count = answer.get("count", len(mine)) if isinstance(answer, dict) else len(mine)
        return {"count": count, "results": mine}

    async def get(self, ctx: Ctx, memory_id: str) -> dict[str, Any]:
        answer = await self._call("GET", f"/v1/memories/{memory_id}/")
        mine = self._mine(ctx.tenant, answer) if isinstance(answer, dict) else None
        if mine is None:
            raise not_found(memory_id)
        return mine

    async def update(
        self,
        ctx: Ctx,
        memory_id: str,
        text: str | None,
        meta: dict[str, Any] | None,
        set_meta: bool,
    ) -> dict[str, Any]:
        await self.get(ctx, memory_id)
        body: dict[str, Any] = {}
        if text is not None:
            body["text"] = text
        if set_meta:
            body["metadata"] = meta
        answer = await self._call("PUT", f"/v1/memories/{memory_id}/", body=body)
        mine = self._mine(ctx.tenant, answer) if isinstance(answer, dict) else None
        return mine if mine is not None else await self.get(ctx, memory_id)

    async def delete(self, ctx: Ctx, memory_id: str) -> dict[str, Any]:
        await self.get(ctx, memory_id)
        await self._call("DELETE", f"/v1/memories/{memory_id}/")
        return {"message": "Memory deleted successfully!"}

    async def delete_all(self, ctx: Ctx, scope: Scope) -> dict[str, Any]:
        await self._call("DELETE", "/v1/memories/", params=self._ids(ctx.tenant, scope))
        return {"message": "Memories deleted successfully!"}
