"""Async engine and session factory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ml_server.config import read_password_file
from ml_server.db.tls import split_url

log = logging.getLogger(__name__)


def ensure_sqlite_dir(url: str) -> None:
    """For a SQLite file URL, create the file's folder (e.g. ``.humansa/``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, pool_size: int = 5, password_file: Path | None = None) -> AsyncEngine:
    """Create the engine; for SQLite, create the folder of the file first.

    Args:
        url: SQLAlchemy URL.
        pool_size: connections kept open (as many again may overflow).
        password_file: read for every NEW connection (credential rotation): pooled connections
            survive a password change, new ones use the file's current content, so nothing has
            to be disposed when the secret rotates.

    A PostgreSQL URL's ``sslmode``/``sslrootcert`` become asyncpg's ``ssl`` (ml_server/db/tls.py).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        ensure_sqlite_dir(url)
        return create_async_engine(url)
    url, tls_args = split_url(url)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"timeout": 5, "command_timeout": 10, **tls_args},
    )
    if password_file is not None:
        _read_password_per_connection(engine, password_file)
    return engine


def _read_password_per_connection(engine: AsyncEngine, path: Path) -> None:
    state = {"password": None if engine.url.password is None else str(engine.url.password)}

    @event.listens_for(engine.sync_engine, "do_connect")
    def _current_password(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        password = read_password_file(path)
        if password is None:
            log.warning(
                "database password file unreadable; using the last known password",
                extra={"fields": {"file": str(path)}},
            )
            password = state["password"]
        elif password != state["password"]:
            if state["password"] is not None:
                log.info("database password changed on disk; new connections use it")
            state["password"] = password
        if password is not None:
            cparams["password"] = password


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
