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
    _login_per_connection(engine, password_file)
    return engine


# Secrets Manager's alternating-users rotation: the secret's user is <user> or <user>_clone, and
# each rotation moves it to the other one (AWS Secrets Manager User Guide, "Lambda function
# rotation strategies"). The password file holds the current user's password; the username
# setting holds the first user's name.
CLONE_SUFFIX = "_clone"
_AUTH_FAILURES = frozenset({"28P01", "28000"})  # invalid_password, invalid_authorization


def alternate_username(name: str) -> str:
    """``x`` <-> ``x_clone``."""
    return name.removesuffix(CLONE_SUFFIX) if name.endswith(CLONE_SUFFIX) else name + CLONE_SUFFIX


def is_auth_failure(exc: BaseException) -> bool:
    """The server refused the login (wrong password or no such role), through any wrapping."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) in _AUTH_FAILURES:
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return False


def _login_per_connection(engine: AsyncEngine, password_file: Path | None) -> None:
    """Each new connection: the password file's current content (rotation), and on a refused
    login one attempt as the alternate user (kept for the next connections)."""
    state = {
        "password": None if engine.url.password is None else str(engine.url.password),
        "user": engine.url.username,
    }

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _rec: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if password_file is not None:
            password = read_password_file(password_file)
            if password is None:
                log.warning(
                    "database password file unreadable; using the last known password",
                    extra={"fields": {"file": str(password_file)}},
                )
                password = state["password"]
            elif password != state["password"]:
                if state["password"] is not None:
                    log.info("database password changed on disk; new connections use it")
                state["password"] = password
            if password is not None:
                cparams["password"] = password
        user = state["user"]
        if not user:
            return None  # the default connect
        cparams["user"] = user
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            if not is_auth_failure(exc):
                raise
            other = alternate_username(user)
            try:
                conn = dialect.connect(*cargs, **{**cparams, "user": other})
            except Exception:
                raise exc from None
            log.info(
                "database login moved to the alternate user (alternating-users rotation)",
                extra={"fields": {"refused": user, "accepted": other}},
            )
            state["user"] = other
            return conn


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
