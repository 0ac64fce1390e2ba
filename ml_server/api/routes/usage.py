"""GET /v1/usage: the calling key's own tokens and spend by model and day."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ml_server.api.deps import KeyDep, StateDep
from ml_server.usage_report import usage_report

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage")
async def my_usage(
    state: StateDep,
    key: KeyDep,
    since: Annotated[date | None, Query(description="first day (UTC), YYYY-MM-DD")] = None,
    until: Annotated[date | None, Query(description="last day (UTC), YYYY-MM-DD")] = None,
    model: Annotated[str | None, Query(description="only this provider/model")] = None,
) -> dict[str, Any]:
    """Rows written so far (the writer batches: a request shows up within about a second)."""
    async with state.sessions() as session:
        rows = await usage_report(session, since=since, until=until, key_id=key.id, model=model)
    return {"object": "list", "api_key_id": key.id, "data": rows}
