"""The ``memories`` table (migration 0005): pgvector on PostgreSQL, an exact search on SQLite.

Every statement is scoped by ``tenant_id`` (the calling API key), so a memory of one key is
invisible to every other key; ``user_id``/``agent_id``/``run_id`` narrow it further.
"""

from __future__ import annotations

import array
import hashlib
import heapq
import json
import math
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

ENTITY_FIELDS = ("user_id", "agent_id", "run_id")
_SELECT = "id, user_id, agent_id, run_id, memory, hash, metadata_json, created_at, updated_at"


class StoreUnavailable(Exception):
    """The memory table is missing (PostgreSQL without pgvector when 0005 ran)."""


@dataclass(frozen=True)
class Scope:
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None

    def items(self) -> list[tuple[str, str]]:
        return [(f, v) for f in ENTITY_FIELDS if (v := getattr(self, f)) is not None]

    def __bool__(self) -> bool:
        return bool(self.items())


@dataclass
class MemoryRecord:
    id: str
    memory: str
    hash: str
    metadata: dict[str, Any] | None
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    created_at: str
    updated_at: str | None
    score: float | None = field(default=None)

    def to_api(self) -> dict[str, Any]:
        """Mem0's memory object (``categories`` always empty: nothing categorizes here)."""
        out: dict[str, Any] = {
            "id": self.id,
            "memory": self.memory,
            "hash": self.hash,
            "metadata": self.metadata,
            "categories": [],
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.score is not None:
            out["score"] = self.score
        return out


def memory_hash(memory: str) -> str:
    """Mem0 reports an MD5 of the text as ``hash``; here it is also the duplicate check."""
    return hashlib.md5(memory.encode(), usedforsecurity=False).hexdigest()


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _normalized(vec: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0:
        return [0.0] * len(vec)
    return [v / norm for v in vec]


def _literal(vec: Sequence[float]) -> str:
    """pgvector's text form, ``[1,2,3]``."""
    return "[" + ",".join(repr(float(v)) for v in vec) + "]"


def _record(row: Any, score: float | None = None) -> MemoryRecord:
    meta = json.loads(row.metadata_json) if row.metadata_json else None
    return MemoryRecord(
        id=row.id,
        memory=row.memory,
        hash=row.hash,
        metadata=meta,
        user_id=row.user_id,
        agent_id=row.agent_id,
        run_id=row.run_id,
        created_at=_iso(row.created_at) or "",
        updated_at=_iso(row.updated_at),
        score=score,
    )


def search_sql(dims: int, where: str, top_k: int) -> str:
    """The pgvector query. ``dims`` and ``top_k`` are literals, not parameters: asyncpg prepares
    statements and PostgreSQL moves to a generic plan after five runs, which cannot prove the
    partial index's ``dims = N`` from a parameter (a sequential scan, measured 285 ms at 10,000
    rows instead of 2 ms). The query vector is a one-time subquery, so even a sequential scan
    parses it once, not once per row."""
    d, k = int(dims), int(top_k)
    distance = f"(embedding::vector({d}) <=> (SELECT CAST(CAST(:q AS text) AS vector({d}))))"
    return (
        f"SELECT {_SELECT}, 1 - {distance} AS score FROM memories "  # noqa: S608
        f"WHERE dims = {d} AND {where} ORDER BY {distance} LIMIT {k}"
    )


class MemoryStore:
    """Args:
    engine: the server's engine (PostgreSQL with pgvector, or SQLite).
    dims: MEMORY_EMBEDDING_DIMENSIONS; rows of another dimension are never compared.
    """

    def __init__(self, engine: AsyncEngine, dims: int) -> None:
        self.engine = engine
        self.dims = int(dims)
        self.dialect = engine.dialect.name
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._ready = False

    @property
    def pg(self) -> bool:
        return self.dialect == "postgresql"

    async def ensure(self) -> None:
        """Check the table once; on PostgreSQL add the HNSW index for ``dims`` if missing."""
        if self._ready:
            return
        async with self.sessions() as s:
            if self.pg:
                exists = (await s.execute(text("SELECT to_regclass('memories')"))).scalar()
            else:
                exists = (
                    await s.execute(
                        text(
                            "SELECT name FROM sqlite_master WHERE type='table' AND name='memories'"
                        )
                    )
                ).scalar()
            if not exists:
                raise StoreUnavailable(
                    "the memory store is not available: this PostgreSQL server has no 'vector' "
                    "extension (pgvector), so migration 0005 did not create the memories table; "
                    "use a server with pgvector (RDS PostgreSQL 16 has it) or MEMORY_BACKEND=mem0"
                )
            if self.pg:
                d = self.dims
                # One process creates it; the others wait on the lock, then find it.
                await s.execute(text("SELECT pg_advisory_xact_lock(hashtext('memories_index'))"))
                await s.execute(
                    text(
                        f"CREATE INDEX IF NOT EXISTS ix_memories_embedding_{d} ON memories USING "
                        f"hnsw ((embedding::vector({d})) vector_cosine_ops) WHERE dims = {d}"
                    )
                )
                await s.commit()
        self._ready = True

    def _where(self, tenant: int, scope: Scope) -> tuple[str, dict[str, Any]]:
        clauses = ["tenant_id = :tenant"]
        params: dict[str, Any] = {"tenant": tenant}
        for name, value in scope.items():  # names are ENTITY_FIELDS, never input
            clauses.append(f"{name} = :{name}")
            params[name] = value
        return " AND ".join(clauses), params

    async def existing_hashes(self, tenant: int, scope: Scope, hashes: list[str]) -> set[str]:
        """Hashes already stored in exactly this scope (the same user/agent/run, no other)."""
        if not hashes:
            return set()
        clauses = ["tenant_id = :tenant"]
        params: dict[str, Any] = {"tenant": tenant}
        for name in ENTITY_FIELDS:
            value = getattr(scope, name)
            if value is None:
                clauses.append(f"{name} IS NULL")
            else:
                clauses.append(f"{name} = :{name}")
                params[name] = value
        marks = []
        for i, h in enumerate(hashes):
            params[f"h{i}"] = h
            marks.append(f":h{i}")
        sql = f"SELECT hash FROM memories WHERE {' AND '.join(clauses)} AND hash IN ({', '.join(marks)})"  # noqa: E501, S608
        async with self.sessions() as s:
            return {r[0] for r in (await s.execute(text(sql), params)).all()}

    def _embedding_param(self, vec: Sequence[float]) -> Any:
        if self.pg:
            return _literal(vec)
        return array.array("f", _normalized(vec)).tobytes()

    def _embedding_sql(self) -> str:
        return "CAST(CAST(:embedding AS text) AS vector)" if self.pg else ":embedding"

    def _now(self) -> Any:
        now = datetime.now(UTC)
        return now if self.pg else now.isoformat()

    async def add(
        self,
        tenant: int,
        scope: Scope,
        items: list[tuple[str, list[float]]],
        metadata: dict[str, Any] | None,
    ) -> list[MemoryRecord]:
        now = self._now()
        meta = json.dumps(metadata) if metadata is not None else None
        rows = []
        for memory, vec in items:
            rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "tenant": tenant,
                    "user_id": scope.user_id,
                    "agent_id": scope.agent_id,
                    "run_id": scope.run_id,
                    "memory": memory,
                    "hash": memory_hash(memory),
                    "metadata_json": meta,
                    "created_at": now,
                    "dims": len(vec),
                    "embedding": self._embedding_param(vec),
                }
            )
        if not rows:
            return []
        cast = self._embedding_sql()  # one of two constants
        sql = (
            "INSERT INTO memories (id, tenant_id, user_id, agent_id, run_id, memory, hash, "  # noqa: S608
            "metadata_json, created_at, updated_at, dims, embedding) VALUES (:id, :tenant, "
            ":user_id, :agent_id, :run_id, :memory, :hash, :metadata_json, :created_at, NULL, "
            ":dims, " + cast + ")"
        )
        async with self.sessions() as s:
            await s.execute(text(sql), rows)
            await s.commit()
        return [
            MemoryRecord(
                id=r["id"],
                memory=r["memory"],
                hash=r["hash"],
                metadata=metadata,
                user_id=scope.user_id,
                agent_id=scope.agent_id,
                run_id=scope.run_id,
                created_at=_iso(r["created_at"]) or "",
                updated_at=None,
            )
            for r in rows
        ]

    async def get(self, tenant: int, memory_id: str) -> MemoryRecord | None:
        async with self.sessions() as s:
            return await self._get(s, tenant, memory_id)

    async def _get(self, s: AsyncSession, tenant: int, memory_id: str) -> MemoryRecord | None:
        sql = f"SELECT {_SELECT} FROM memories WHERE tenant_id = :tenant AND id = :id"  # noqa: S608
        row = (await s.execute(text(sql), {"tenant": tenant, "id": memory_id})).first()
        return _record(row) if row is not None else None

    async def page(
        self, tenant: int, scope: Scope, *, limit: int, offset: int
    ) -> tuple[int, list[MemoryRecord]]:
        where, params = self._where(tenant, scope)
        async with self.sessions() as s:
            total = (
                await s.execute(text(f"SELECT count(*) FROM memories WHERE {where}"), params)  # noqa: S608
            ).scalar_one()
            rows = (
                await s.execute(
                    text(
                        f"SELECT {_SELECT} FROM memories WHERE {where} "  # noqa: S608
                        "ORDER BY created_at DESC, id LIMIT :limit OFFSET :offset"
                    ),
                    {**params, "limit": limit, "offset": offset},
                )
            ).all()
        return int(total), [_record(r) for r in rows]

    async def search(
        self, tenant: int, scope: Scope, vec: list[float], *, top_k: int, threshold: float | None
    ) -> list[MemoryRecord]:
        """The ``top_k`` nearest by cosine similarity (``score``, 1 = same direction), then
        those below ``threshold`` dropped."""
        where, params = self._where(tenant, scope)
        d = len(vec)
        params["dims"] = d
        if self.pg:
            found = await self._search_pg(where, params, vec, top_k)
        else:
            found = await self._search_exact(where, params, vec, top_k)
        if threshold is not None:
            found = [m for m in found if (m.score or 0.0) >= threshold]
        return found

    async def _search_pg(
        self, where: str, params: dict[str, Any], vec: list[float], top_k: int
    ) -> list[MemoryRecord]:
        sql = search_sql(int(params.pop("dims")), where, top_k)
        async with self.sessions() as s:
            # HNSW filters after the scan: look at more candidates than the default 40.
            await s.execute(text(f"SET LOCAL hnsw.ef_search = {max(100, 2 * top_k)}"))
            rows = (await s.execute(text(sql), {**params, "q": _literal(vec)})).all()
        return [_record(r, float(r.score)) for r in rows]

    async def _search_exact(
        self, where: str, params: dict[str, Any], vec: list[float], top_k: int
    ) -> list[MemoryRecord]:
        q = _normalized(vec)
        sql = f"SELECT {_SELECT}, embedding FROM memories WHERE dims = :dims AND {where}"  # noqa: S608
        async with self.sessions() as s:
            rows = (await s.execute(text(sql), params)).all()
        mul = operator.mul
        scored = ((sum(map(mul, q, array.array("f", r.embedding))), i) for i, r in enumerate(rows))
        best = heapq.nlargest(top_k, scored)
        return [_record(rows[i], float(score)) for score, i in best]

    async def update(
        self,
        tenant: int,
        memory_id: str,
        *,
        memory: str | None,
        vec: list[float] | None,
        metadata: dict[str, Any] | None,
        set_metadata: bool,
    ) -> MemoryRecord | None:
        sets = ["updated_at = :now"]
        params: dict[str, Any] = {"tenant": tenant, "id": memory_id, "now": self._now()}
        if memory is not None and vec is not None:
            sets += ["memory = :memory", "hash = :hash", "dims = :dims"]
            sets.append(f"embedding = {self._embedding_sql()}")
            params.update(
                memory=memory,
                hash=memory_hash(memory),
                dims=len(vec),
                embedding=self._embedding_param(vec),
            )
        if set_metadata:
            sets.append("metadata_json = :metadata_json")
            params["metadata_json"] = json.dumps(metadata) if metadata is not None else None
        sql = f"UPDATE memories SET {', '.join(sets)} WHERE tenant_id = :tenant AND id = :id"  # noqa: S608
        async with self.sessions() as s:
            result = await s.execute(text(sql), params)
            if not getattr(result, "rowcount", 0):
                await s.rollback()
                return None
            record = await self._get(s, tenant, memory_id)
            await s.commit()
        return record

    async def delete(self, tenant: int, memory_id: str) -> bool:
        async with self.sessions() as s:
            result = await s.execute(
                text("DELETE FROM memories WHERE tenant_id = :tenant AND id = :id"),
                {"tenant": tenant, "id": memory_id},
            )
            await s.commit()
        return bool(getattr(result, "rowcount", 0))

    async def delete_all(self, tenant: int, scope: Scope) -> int:
        where, params = self._where(tenant, scope)
        async with self.sessions() as s:
            result = await s.execute(text(f"DELETE FROM memories WHERE {where}"), params)  # noqa: S608
            await s.commit()
        return int(getattr(result, "rowcount", 0))
