"""Spend and tokens by key, model and day, from the usage table (CLI ``usage`` and GET /v1/usage).

``cost_usd`` is the sum of the priced rows; ``unpriced_requests`` counts the rows whose cost is
unknown (model without a price in the catalogue): a total with unpriced rows is a lower bound.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ml_server.db.models import UsageRecord as U

_SUMS = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def day_range(since: date | None, until: date | None) -> tuple[datetime, datetime]:
    """[since 00:00 UTC, until+1 00:00 UTC); default: the last 7 days including today."""
    today = datetime.now(UTC).date()
    until = until or today
    since = since or until - timedelta(days=6)
    return (
        datetime.combine(since, time(), tzinfo=UTC),
        datetime.combine(until + timedelta(days=1), time(), tzinfo=UTC),
    )


async def usage_report(
    session: AsyncSession,
    *,
    since: date | None = None,
    until: date | None = None,
    key_id: int | None = None,
    model: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (day, key, provider/model), newest day first."""
    start, end = day_range(since, until)
    day = cast(U.created_at, Date).label("day")
    cols: list[Any] = [
        day,
        U.api_key_id,
        U.provider,
        U.model,
        func.count().label("requests"),
        func.sum(case((U.status_code >= 400, 1), else_=0)).label("failed_requests"),
        func.sum(case((U.tokens_estimated, 1), else_=0)).label("estimated_requests"),
        func.sum(case((U.cost_usd.is_(None), 1), else_=0)).label("unpriced_requests"),
        func.coalesce(func.sum(U.cost_usd), 0).label("cost_usd"),
    ]
    cols += [func.coalesce(func.sum(getattr(U, c)), 0).label(c) for c in _SUMS]
    stmt = select(*cols).where(U.created_at >= start, U.created_at < end)
    if key_id is not None:
        stmt = stmt.where(U.api_key_id == key_id)
    if model is not None:
        provider, sep, name = model.partition("/")
        stmt = (
            stmt.where(U.provider == provider, U.model == name)
            if sep
            else stmt.where(U.model == model)
        )
    stmt = stmt.group_by(day, U.api_key_id, U.provider, U.model).order_by(
        day.desc(), U.api_key_id, U.provider, U.model
    )
    out = []
    for r in (await session.execute(stmt)).mappings():
        row = {
            "day": str(r["day"]),
            "api_key_id": r["api_key_id"],
            "model": f"{r['provider']}/{r['model']}",
            "requests": int(r["requests"]),
            "failed_requests": int(r["failed_requests"] or 0),
            "estimated_requests": int(r["estimated_requests"] or 0),
            "unpriced_requests": int(r["unpriced_requests"] or 0),
            "cost_usd": str(Decimal(r["cost_usd"] or 0).quantize(Decimal("0.000001"))),
        }
        row.update({c: int(r[c] or 0) for c in _SUMS})
        out.append(row)
    return out
