"""Alembic environment: async engine, URL handed over by ml_server.db.migrate."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ml_server.db.engine import alternate_username, is_auth_failure
from ml_server.db.models import Base
from ml_server.db.tls import split_url

config = context.config
target_metadata = Base.metadata
# Several instances may start at once: on PostgreSQL, one migrates while the others wait.
_LOCK_ID = 7_206_511


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        context.run_migrations()


async def _run_async(url: str) -> None:
    url, tls_args = split_url(url)  # the server's sslmode / sslrootcert, as the engine's
    try:
        await _migrate(url, tls_args)
    except Exception as exc:
        # Alternating-users rotation: the password may be <user>_clone's now (or <user>'s).
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql" or not parsed.username:
            raise
        if not is_auth_failure(exc):
            raise
        other = parsed.set(username=alternate_username(parsed.username))
        await _migrate(other.render_as_string(hide_password=False), tls_args)


async def _migrate(url: str, tls_args: dict[str, object]) -> None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args=tls_args)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; run `python -m ml_server migrate`")
run_migrations_online()
