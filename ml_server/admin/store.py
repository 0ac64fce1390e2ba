"""Admin operations on the database: keys with their governance fields, the audit log, usage."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ml_server.db.keys import generate_key, hash_key
from ml_server.db.models import ApiKey, UsageRecord
from ml_server.limits import parse_models

# Fields an admin sets on a key (API name -> column). ``rpm`` is the existing rate_limit_rpm.
KEY_FIELDS = {
    "name": "name",
    "owner": "owner",
    "allowed_models": "allowed_models",
    "rpm": "rate_limit_rpm",
    "tpm": "tpm",
    "max_concurrent": "max_concurrent",
    "budget_daily_usd": "budget_daily_usd",
    "budget_monthly_usd": "budget_monthly_usd",
    "expires_at": "expires_at",
}

AUDIT = Table(
    "admin_audit",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True)),
    Column("actor", String(200)),
    Column("action", String(64)),
    Column("target", String(200)),
    Column("status", Integer),
    Column("detail", Text),
    Column("client", String(64)),
)


def _money(value: Any) -> float | None:
    return None if value is None else float(value)


def _when(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def key_view(row: ApiKey) -> dict[str, Any]:
    """A key as the admin API shows it: never the secret, only its first characters."""
    now = datetime.now(UTC)
    expires = row.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    status = "active"
    if row.revoked_at is not None:
        status = "revoked"
    elif expires is not None and expires <= now:
        status = "expired"
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "prefix": row.prefix,
        "status": status,
        "created_at": _when(row.created_at),
        "revoked_at": _when(row.revoked_at),
        "expires_at": _when(row.expires_at),
        "allowed_models": parse_models(row.allowed_models),
        "rpm": row.rate_limit_rpm,
        "tpm": row.tpm,
        "max_concurrent": row.max_concurrent,
        "budget_daily_usd": _money(row.budget_daily_usd),
        "budget_monthly_usd": _money(row.budget_monthly_usd),
    }


def _column_values(fields: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for api_name, value in fields.items():
        column = KEY_FIELDS[api_name]
        if api_name == "allowed_models":
            value = json.dumps(list(value)) if value else None
        elif api_name.startswith("budget_") and value is not None:
            value = Decimal(str(value))
        values[column] = value
    return values


async def create_key(session: AsyncSession, fields: dict[str, Any]) -> tuple[ApiKey, str]:
    secret = generate_key()
    row = ApiKey(key_hash=hash_key(secret), prefix=secret[:10], **_column_values(fields))
    session.add(row)
    await session.commit()
    await session.refresh(row)
    return row, secret


async def list_keys(session: AsyncSession, *, include_revoked: bool) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list((await session.scalars(query)).all())


async def get_key(session: AsyncSession, key_id: int) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def update_key(session: AsyncSession, row: ApiKey, fields: dict[str, Any]) -> ApiKey:
    for column, value in _column_values(fields).items():
        setattr(row, column, value)
    await session.commit()
    await session.refresh(row)
    return row


async def revoke_key(session: AsyncSession, row: ApiKey) -> ApiKey:
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.commit()
        await session.refresh(row)
    return row


async def write_audit(session: AsyncSession, entry: dict[str, Any]) -> None:
    await session.execute(AUDIT.insert().values(**entry))
    await session.commit()


async def read_audit(session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    rows = await session.execute(AUDIT.select().order_by(AUDIT.c.id.desc()).limit(limit))
    out = []
    for r in rows.mappings():
        item = dict(r)
        item["at"] = _when(item["at"])
        item["detail"] = json.loads(item["detail"]) if item["detail"] else None
        out.append(item)
    return out


async def usage_report(
    session: AsyncSession, *, start: date, end: date, key_id: int | None
) -> list[dict[str, Any]]:
    """Requests, tokens and spend per UTC day, key and model, from the usage rows."""
    u = UsageRecord.__table__
    dialect = (await session.connection()).dialect.name
    if dialect == "postgresql":
        day = func.date(func.timezone("UTC", u.c.created_at))
    else:
        day = func.date(u.c.created_at)
    cost = getattr(u.c, "cost_usd", None)
    columns = [
        day.label("day"),
        u.c.api_key_id,
        u.c.provider,
        u.c.model,
        func.count().label("requests"),
        func.coalesce(func.sum(u.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(u.c.completion_tokens), 0).label("completion_tokens"),
    ]
    if cost is not None:
        columns.append(func.sum(cost).label("cost_usd"))
    start_at = datetime(start.year, start.month, start.day, tzinfo=UTC)
    end_at = datetime(end.year, end.month, end.day, tzinfo=UTC)
    query = (
        select(*columns)
        .where(u.c.created_at >= start_at, u.c.created_at < end_at)
        .group_by(day, u.c.api_key_id, u.c.provider, u.c.model)
        .order_by(day, u.c.api_key_id, u.c.provider, u.c.model)
    )
    if key_id is not None:
        query = query.where(u.c.api_key_id == key_id)
    names = dict((await session.execute(select(ApiKey.id, ApiKey.name))).tuples().all())
    out = []
    for r in (await session.execute(query)).mappings():
        out.append(
            {
                "day": str(r["day"]),
                "key_id": r["api_key_id"],
                "key_name": names.get(r["api_key_id"]),
                "provider": r["provider"],
                "model": r["model"],
                "requests": int(r["requests"]),
                "prompt_tokens": int(r["prompt_tokens"]),
                "completion_tokens": int(r["completion_tokens"]),
                "cost_usd": _money(r["cost_usd"]) if cost is not None else None,
            }
        )
    return out
