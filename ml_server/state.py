"""What the lifespan creates and the routes reach through dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ml_server.config import Settings
from ml_server.db.keys import KeyVerifier
from ml_server.limits import Governor
from ml_server.metrics import Metrics
from ml_server.resilience import RateLimiter
from ml_server.router import Router
from ml_server.usage import UsageRecorder


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    router: Router
    usage: UsageRecorder
    keys: KeyVerifier
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    governor: Governor = field(
        default_factory=lambda: Governor(None, default_rpm=0, sync_seconds=1)
    )
    migrated: bool = False
    migration_error: str | None = field(default=None)
