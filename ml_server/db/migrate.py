"""Apply the Alembic migrations shipped in ml_server/migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ml_server.db.engine import ensure_sqlite_dir

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def upgrade_to_head(url: str) -> None:
    """Run every pending migration (blocking; starts its own event loop)."""
    # Imported here: Alembic costs ~0.3 s of start-up, and the server imports it on the
    # migration's worker thread, off the path to the first /health answer.
    from alembic import command
    from alembic.config import Config

    ensure_sqlite_dir(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    command.upgrade(cfg, "head")


async def upgrade_to_head_async(url: str) -> None:
    """Same, from inside a running event loop (the migration runs on a worker thread)."""
    await asyncio.to_thread(upgrade_to_head, url)
