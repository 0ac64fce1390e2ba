"""The memory layer: a Mem0-compatible API over this server's database (pgvector on PostgreSQL,
an exact search on SQLite) or Mem0's cloud, and the opt-in retrieval into chat requests.

The backend is made on first use and kept on the app (``app.state.memory``); ``close`` ends it
at shutdown (the Mem0 backend's HTTP session).
"""

from __future__ import annotations

from typing import Any

from ml_server.memory.service import LocalMemory, MemoryBackend
from ml_server.memory.store import MemoryStore
from ml_server.state import AppState


def backend(app: Any, state: AppState) -> MemoryBackend:
    found: MemoryBackend | None = getattr(app.state, "memory", None)
    if found is None:
        settings = state.settings
        if settings.memory_backend == "mem0":
            from ml_server.memory.mem0 import Mem0Memory

            found = Mem0Memory(settings)
        else:
            found = LocalMemory(
                settings, MemoryStore(state.engine, settings.memory_embedding_dimensions)
            )
        app.state.memory = found
    return found


async def close(app: Any) -> None:
    found: MemoryBackend | None = getattr(app.state, "memory", None)
    if found is not None:
        await found.close()
        app.state.memory = None
