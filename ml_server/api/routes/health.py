"""GET /health (no dependency, for the ALB) and GET /ready (checks the database)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ml_server import __version__
from ml_server.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: StateDep) -> dict[str, str | None]:
    s = state.settings
    return {
        "status": "ok",
        "version": __version__,
        "environment": s.environment,
        "instance_id": s.instance_id,
    }


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    """503 only when the database is not usable.

    ``circuits`` reports each provider's breaker for information: an open breaker never makes
    the instance unready (the ALB would pull every instance at once for a provider outage that
    fallbacks or a cool-down handle better).
    """
    circuits = state.router.circuit_states()
    # The usage writer's state is information too (a stuck writer keeps its rows in the spool;
    # pulling the instance would not help): ``usage.state`` is "stuck" when rows wait and
    # nothing was written for USAGE_STUCK_SECONDS (alarm on mlserver_usage_writer_stuck).
    usage = state.usage.status()
    if not state.migrated:
        reason = "database migrations not applied yet"
        if state.migration_error:
            reason += f" (last error: {state.migration_error})"
        return JSONResponse(
            {"status": "unavailable", "reason": reason, "circuits": circuits, "usage": usage},
            status_code=503,
        )
    try:
        async with asyncio.timeout(3):
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse(
            {
                "status": "unavailable",
                "reason": f"database unreachable: {type(exc).__name__}",
                "circuits": circuits,
                "usage": usage,
            },
            status_code=503,
        )
    return JSONResponse({"status": "ready", "database": "ok", "circuits": circuits, "usage": usage})
