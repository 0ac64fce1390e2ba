"""The usage writer against a real PostgreSQL: a bad row never jams it, an outage or a shutdown
loses no row, a replay writes nothing twice."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ml_server.db.engine import make_engine, make_sessionmaker
from ml_server.db.migrate import upgrade_to_head_async
from ml_server.metrics import Metrics
from ml_server.tests.pg import TempPostgres
from ml_server.usage import UsageRecorder, UsageRow

pytestmark = pytest.mark.slow


def _row(tag: str, **over: object) -> UsageRow:
    fields: dict[str, object] = {
        "created_at": datetime.now(UTC),
        "request_id": tag,
        "api_key_id": None,
        "endpoint": "chat",
        "provider": "openai",
        "model": "gpt-4o",
        "stream": False,
        "status_code": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 12,
    }
    fields.update(over)
    return UsageRow(**fields)  # type: ignore[arg-type]


async def _count(dsn: str, like: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage WHERE request_id LIKE $1", like))
    finally:
        await conn.close()


async def _wait_count(dsn: str, like: str, want: int, deadline_s: float = 15) -> int:
    end = time.monotonic() + deadline_s
    n = 0
    while time.monotonic() < end:
        n = await _count(dsn, like)
        if n >= want:
            break
        await asyncio.sleep(0.1)
    return n


def _spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("usage-*.jsonl"))


async def _spool_empty(spool: Path, deadline_s: float = 10) -> None:
    end = time.monotonic() + deadline_s
    for _ in range(int(deadline_s / 0.05)):
        if not _spool_files(spool) or time.monotonic() > end:
            return
        await asyncio.sleep(0.05)


@pytest.fixture
async def sessions(pg: TempPostgres) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await upgrade_to_head_async(pg.url)
    engine = make_engine(pg.url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def test_bad_rows_do_not_stop_accounting(
    pg: TempPostgres, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Reproduction: int4 overflow, a NUL in the model, a deleted key (FK), an absurd count."""
    metrics = Metrics()
    rec = UsageRecorder(
        sessions,
        metrics,
        queue_size=10_000,
        batch_size=200,
        flush_seconds=0.1,
        retry_max_seconds=0.5,
    )
    rec.start()
    try:
        rec.record(_row("bad-int4", prompt_tokens=3_000_000_000))
        rec.record(_row("bad-nul", model="gpt\u00004o"))
        rec.record(_row("bad-fk", api_key_id=987_654_321))
        rec.record(_row("bad-absurd", prompt_tokens=10**19))
        for i in range(300):
            rec.record(_row(f"good-{i}"))
        assert await _wait_count(pg.dsn, "good-%", 300) == 300
        assert await _wait_count(pg.dsn, "bad-%", 3) == 3
    finally:
        await rec.stop(flush_seconds=2)
    conn = await asyncpg.connect(pg.dsn)
    try:
        big = await conn.fetchval("SELECT prompt_tokens FROM usage WHERE request_id = 'bad-int4'")
        assert big == 3_000_000_000
        model = await conn.fetchval("SELECT model FROM usage WHERE request_id = 'bad-nul'")
        assert model == "gpt\ufffd4o"
        quarantined = await conn.fetch("SELECT reason, row_json FROM usage_quarantine")
    finally:
        await conn.close()
    assert len(quarantined) == 1
    assert "int64" in quarantined[0]["reason"]
    assert "bad-absurd" in quarantined[0]["row_json"]
    assert metrics.usage_rows_quarantined._value.get() == 1


async def test_outage_and_shutdown_lose_nothing_and_replay_writes_once(tmp_path: Path) -> None:
    """Reproduction: database down at SIGTERM dropped the queued rows."""
    spool = tmp_path / "spool"
    with TempPostgres() as cluster:
        await upgrade_to_head_async(cluster.url)
        engine = make_engine(cluster.url)
        try:
            sessions = make_sessionmaker(engine)
            rec = UsageRecorder(
                sessions,
                Metrics(),
                queue_size=10_000,
                batch_size=50,
                flush_seconds=0.05,
                retry_max_seconds=0.2,
                spool_dir=spool,
            )
            rec.start()
            for i in range(20):
                rec.record(_row(f"before-{i}"))
            assert await _wait_count(cluster.dsn, "before-%", 20) == 20
            cluster.stop()  # the outage
            for i in range(120):
                rec.record(_row(f"during-{i}"))
            await asyncio.sleep(1.0)  # the writer fails, spools, backs off
            status = rec.status()
            assert status["spool_files"] >= 1 and status["last_error"]
            for i in range(30):
                rec.record(_row(f"atstop-{i}"))
            await rec.stop(flush_seconds=0.5)  # SIGTERM with the database down
            files = sorted(spool.glob("usage-*.jsonl"))
            assert files, "rows kept on disk"
            copy = tmp_path / "copy"
            copy.mkdir()
            for f in files:
                shutil.copy(f, copy / f.name)
            await engine.dispose()

            cluster.start()  # the next start replays the spool
            engine = make_engine(cluster.url)
            sessions = make_sessionmaker(engine)
            again = UsageRecorder(
                sessions,
                Metrics(),
                queue_size=100,
                batch_size=50,
                flush_seconds=0.05,
                retry_max_seconds=0.2,
                spool_dir=spool,
            )
            again.start()
            assert await _wait_count(cluster.dsn, "during-%", 120) == 120
            assert await _wait_count(cluster.dsn, "atstop-%", 30) == 30
            await _spool_empty(spool)
            assert not list(spool.glob("usage-*.jsonl"))
            # The same files once more (a crash after the write, before the delete): no duplicate.
            for f in copy.iterdir():
                shutil.copy(f, spool / f.name)
            again.record(_row("marker"))
            await _wait_count(cluster.dsn, "marker", 1)
            await _spool_empty(spool)
            await again.stop(flush_seconds=2)
            assert await _count(cluster.dsn, "during-%") == 120
            assert await _count(cluster.dsn, "atstop-%") == 30
            assert await _count(cluster.dsn, "before-%") == 20
        finally:
            await engine.dispose()


async def test_stuck_writer_is_reported(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Reproduction: /ready said 200 with no detail while the writer could write nothing."""
    broken = make_sessionmaker(make_engine("postgresql+asyncpg://u:p@127.0.0.1:1/none"))
    rec = UsageRecorder(
        broken,
        Metrics(),
        queue_size=100,
        batch_size=10,
        flush_seconds=0.05,
        retry_max_seconds=0.2,
        spool_dir=tmp_path,
        stuck_seconds=0.3,
    )
    rec.start()
    try:
        assert rec.status()["state"] == "ok"
        rec.record(_row("stuck"))
        await asyncio.sleep(0.8)
        status = rec.status()
        assert status["state"] == "stuck", status
        assert status["spool_files"] == 1
    finally:
        await rec.stop(flush_seconds=0.2)
