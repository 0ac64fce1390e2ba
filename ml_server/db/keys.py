"""API keys: generated once, stored as a SHA-256 hash (the key itself has 256 bits of entropy)."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ml_server.db.models import ApiKey
from ml_server.limits import KeyPolicy

KEY_PREFIX = "hsk-"
# generate_key(): the prefix and 43 URL-safe base64 characters (256 bits).
_KEY_FORMAT = re.compile(r"hsk-[A-Za-z0-9_-]{43}")
NEGATIVE_CACHE_SIZE = 10_000


def key_format_ok(key: str) -> bool:
    """Whether ``key`` can be one of our keys at all: checked before any cache or database
    lookup, so junk bearer tokens cost neither."""
    return _KEY_FORMAT.fullmatch(key) is not None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    rpm: int | None = None  # None: the server's RATE_LIMIT_RPM; 0: no limit
    policy: KeyPolicy | None = None  # models, TPM, concurrency, budgets, expiry (limits.py)


async def create_key(
    session: AsyncSession, name: str, rpm: int | None = None
) -> tuple[ApiKey, str]:
    key = generate_key()
    row = ApiKey(name=name, key_hash=hash_key(key), prefix=key[:10], rate_limit_rpm=rpm)
    session.add(row)
    await session.commit()
    return row, key


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.scalars(select(ApiKey).order_by(ApiKey.id))).all())


async def set_key_rpm(session: AsyncSession, key_id: int, rpm: int | None) -> bool:
    """Set a key's requests-per-minute limit (None = the server default, 0 = no limit)."""
    result = await session.execute(
        update(ApiKey).where(ApiKey.id == key_id).values(rate_limit_rpm=rpm)
    )
    await session.commit()
    return bool(getattr(result, "rowcount", 0))


async def revoke_key(session: AsyncSession, key_id: int) -> bool:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    await session.commit()
    return bool(getattr(result, "rowcount", 0))


class KeyVerifier:
    """Looks keys up by hash with a short in-memory cache.

    A cached answer is reused for ``ttl`` seconds (a revocation takes effect within ``ttl``); when
    the database cannot be reached, a known-good key keeps working from the stale cache entry.
    A key of the wrong format is refused without any lookup; well-formed unknown keys go to a
    separate, bounded negative cache (oldest out first), so junk keys never evict valid ones.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}
        self._unknown: dict[str, float] = {}  # digest -> when it was found unknown

    async def verify(self, key: str) -> KeyInfo | None:
        if not key_format_ok(key):
            return None
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        seen = self._unknown.get(digest)
        if seen is not None and now - seen < self._ttl:
            return None
        try:
            async with self._sessions() as session:
                row = await session.scalar(
                    select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
                )
        except Exception:
            if cached is not None and cached[1] is not None:
                return cached[1]
            raise
        if row is None:
            self._cache.pop(digest, None)  # revoked or deleted since
            if len(self._unknown) >= NEGATIVE_CACHE_SIZE:
                del self._unknown[next(iter(self._unknown))]
            self._unknown[digest] = now
            return None
        info = KeyInfo(row.id, row.name, row.rate_limit_rpm, KeyPolicy.from_row(row))
        self._unknown.pop(digest, None)
        if len(self._cache) > 100_000:  # valid keys only: bounded by the keys that exist
            self._cache.clear()
        self._cache[digest] = (now, info)
        return info
