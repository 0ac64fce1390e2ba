"""Usage accounting off the request path: a bounded queue drained by one batch writer task.

Nothing is lost and nothing is written twice:

- **A bad row never jams the writer.** A batch the database refuses because of its data (a value
  out of range, a constraint) is split in halves until the bad row is alone; the others are
  written and the bad one goes to ``usage_quarantine`` with the reason
  (``mlserver_usage_rows_quarantined_total``).
- **A database outage or a shutdown loses no row.** Rows that could not be written are appended
  to a durable local spool (JSON lines, fsynced, bounded by USAGE_SPOOL_MAX_BYTES) and written
  at the next chance, including at the next start.
- **No duplicates.** Every row carries a ``row_id`` made here; the insert is
  ``ON CONFLICT (row_id) DO NOTHING``, so a batch replayed after an unacknowledged commit is
  harmless.

Rows that do not fit the queue (USAGE_QUEUE_SIZE) or the spool are dropped and counted
(``mlserver_usage_rows_dropped_total``). ``status()`` (shown by ``/ready``) says when the writer
is stuck: rows waiting and no successful write for USAGE_STUCK_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ml_server.db.models import UsageQuarantine, UsageRecord
from ml_server.metrics import Metrics
from ml_server.tasks import cancel_and_wait

log = logging.getLogger(__name__)
USAGE_TABLE = UsageRecord.metadata.tables[UsageRecord.__tablename__]
QUARANTINE_TABLE = UsageRecord.metadata.tables[UsageQuarantine.__tablename__]
# Column lengths of the string fields (longer values are cut, NUL replaced: never a bad row).
_STRING_LIMITS = {"request_id": 64, "endpoint": 32, "provider": 32, "model": 200, "row_id": 32}


# Row ids: 16 random hex digits per process, then a counter: unique across processes and
# restarts, and cheaper than a uuid4 per request (one os.urandom syscall each).
_ROW_ID_PREFIX = os.urandom(8).hex()
_ROW_ID_COUNTER = itertools.count(1)


def _reseed_row_ids() -> None:  # a forked child must not repeat its parent's ids
    global _ROW_ID_PREFIX, _ROW_ID_COUNTER
    _ROW_ID_PREFIX = os.urandom(8).hex()
    _ROW_ID_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_row_ids)


def new_row_id() -> str:
    return f"{_ROW_ID_PREFIX}{next(_ROW_ID_COUNTER):016x}"


@dataclass(slots=True)
class UsageRow:
    created_at: datetime
    request_id: str
    api_key_id: int | None
    endpoint: str
    provider: str
    model: str
    stream: bool
    status_code: int
    prompt_tokens: int  # input + cached_input + cache_write
    completion_tokens: int  # output + reasoning
    latency_ms: int
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    tokens_estimated: bool = False
    cost_usd: Decimal | None = None
    row_id: str = field(default_factory=new_row_id)

    def to_json(self) -> dict[str, Any]:
        out = {c: getattr(self, c) for c in COLUMNS}
        out["created_at"] = self.created_at.isoformat()
        out["cost_usd"] = None if self.cost_usd is None else str(self.cost_usd)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageRow:
        data = dict(data)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        cost = data.get("cost_usd")
        data["cost_usd"] = None if cost is None else Decimal(cost)
        return cls(**{k: v for k, v in data.items() if k in _FIELD_NAMES})


COLUMNS = tuple(f.name for f in fields(UsageRow))
_FIELD_NAMES = frozenset(COLUMNS)
_COLS = ", ".join(COLUMNS)
# Column names are this module's constants, not input.
_CREATE_INCOMING = f"CREATE TEMP TABLE IF NOT EXISTS usage_incoming ON COMMIT DELETE ROWS AS SELECT {_COLS} FROM usage WITH NO DATA"  # noqa: E501, S608
_INSERT_INCOMING = f"INSERT INTO usage ({_COLS}) SELECT {_COLS} FROM usage_incoming ON CONFLICT (row_id) DO NOTHING"  # noqa: E501, S608


def _clean(row: UsageRow) -> UsageRow:
    """Strings the database cannot hold are made to fit (NUL replaced, cut to the column)."""
    for name, limit in _STRING_LIMITS.items():
        value = getattr(row, name)
        if isinstance(value, str) and (len(value) > limit or "\x00" in value):
            setattr(row, name, value.replace("\x00", "\ufffd")[:limit])
    return row


def is_row_error(exc: BaseException) -> bool:
    """True when the database (or the driver) refused the data, not when it is unreachable."""
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
            return True
        exc = exc.orig
    if isinstance(exc, OSError | asyncio.TimeoutError):
        return False
    return isinstance(
        exc,
        asyncpg.exceptions.DataError
        | asyncpg.exceptions.IntegrityConstraintViolationError
        | ArithmeticError
        | TypeError
        | ValueError,
    )


class Spool:
    """Rows kept on local disk until the database takes them: one fsynced JSON-lines file per
    spill, replayed oldest first, deleted once written. Bounded by ``max_bytes`` in total."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("usage-*.jsonl"))

    def size(self) -> int:
        total = 0
        for f in self.files():
            with contextlib.suppress(OSError):
                total += f.stat().st_size
        return total

    def rows_in(self) -> int:
        return sum(1 for f in self.files() for line in f.open("rb") if line.strip())

    def spill(self, rows: list[UsageRow]) -> tuple[int, int]:
        """Write ``rows`` durably; returns (kept, dropped because the spool is full)."""
        room = self.max_bytes - self.size()
        lines: list[bytes] = []
        for row in rows:
            line = json.dumps(row.to_json(), ensure_ascii=True).encode() + b"\n"
            if len(line) > room:
                break
            room -= len(line)
            lines.append(line)
        if lines:
            self._seq += 1
            name = f"usage-{time.time_ns():020d}-{os.getpid()}-{self._seq}.jsonl"
            tmp = self.dir / (name + ".tmp")
            with tmp.open("wb") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(self.dir / name)
            with contextlib.suppress(OSError):  # the rename itself is durable once the dir is
                fd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return len(lines), len(rows) - len(lines)

    @staticmethod
    def read(path: Path) -> list[UsageRow]:
        rows = []
        for line in path.read_bytes().splitlines():
            if line.strip():
                try:
                    rows.append(UsageRow.from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning(
                        "unreadable usage spool line skipped",
                        extra={"fields": {"file": path.name, "error": type(exc).__name__}},
                    )
        return rows


class UsageRecorder:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        *,
        queue_size: int,
        batch_size: int,
        flush_seconds: float,
        retry_max_seconds: float,
        spool_dir: Path | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        stuck_seconds: float = 120.0,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._queue: asyncio.Queue[UsageRow] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._retry_max = retry_max_seconds
        self._task: asyncio.Task[None] | None = None
        self._pending: list[UsageRow] = []
        self.spool = Spool(spool_dir, spool_max_bytes) if spool_dir is not None else None
        self._stuck_after = stuck_seconds
        self._last_ok = time.monotonic()
        self._waiting_since: float | None = None
        self.last_error: str | None = None

    # --- request side -----------------------------------------------------------------------
    def record(self, row: UsageRow) -> None:
        """Queue a row; never blocks and never raises."""
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self._metrics.usage_rows_dropped.inc()
        self._metrics.usage_queue_depth.set(self._queue.qsize() + len(self._pending))

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For /ready: ``state`` is ``stuck`` when rows wait and nothing was written for
        USAGE_STUCK_SECONDS."""
        queued = self._queue.qsize() + len(self._pending)
        spooled = len(self.spool.files()) if self.spool is not None else 0
        now = time.monotonic()
        waiting = queued > 0 or spooled > 0
        since = max(self._last_ok, self._waiting_since or now)
        stuck = waiting and now - since > self._stuck_after
        self._metrics.usage_writer_stuck.set(1 if stuck else 0)
        out: dict[str, Any] = {
            "state": "stuck" if stuck else "ok",
            "queued": queued,
            "spool_files": spooled,
            "seconds_since_last_write": round(now - self._last_ok, 1),
        }
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self, flush_seconds: float = 5.0) -> None:
        """Stop the writer, giving it ``flush_seconds`` to write what is queued; what is left
        goes to the spool (written at the next start)."""
        if self._task is None:
            return
        await cancel_and_wait(self._task)
        self._task = None
        try:
            async with asyncio.timeout(flush_seconds):
                while True:  # every batch, not only the first
                    self._drain_queue_into_pending()
                    if not self._pending:
                        break
                    await self._write_isolating(self._pending)
                    self._pending = []
        except Exception as exc:
            self._note_error(exc)
        self._drain_queue_into_pending(limit=None)
        if self._pending:
            self._spill(self._pending, reason="shutdown")
            self._pending = []

    # --- writer -----------------------------------------------------------------------------
    def _drain_queue_into_pending(self, limit: int | None = -1) -> None:
        cap = self._batch_size if limit == -1 else limit
        while not self._queue.empty() and (cap is None or len(self._pending) < cap):
            self._pending.append(self._queue.get_nowait())

    async def _collect(self) -> None:
        if not self._pending:
            self._pending.append(await self._queue.get())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_seconds
        while len(self._pending) < self._batch_size:
            self._drain_queue_into_pending()
            if len(self._pending) >= self._batch_size:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                self._pending.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break

    def _spill(self, rows: list[UsageRow], *, reason: str) -> None:
        if self.spool is None:
            self._metrics.usage_rows_dropped.inc(len(rows))
            log.warning(
                "usage rows lost: no spool configured",
                extra={"fields": {"rows": len(rows), "reason": reason}},
            )
            return
        try:
            kept, dropped = self.spool.spill(rows)
        except OSError as exc:
            kept, dropped = 0, len(rows)
            log.error(
                "usage spool not writable",
                extra={"fields": {"dir": str(self.spool.dir), "error": str(exc)[:200]}},
            )
        self._metrics.usage_rows_spooled.inc(kept)
        if dropped:
            self._metrics.usage_rows_dropped.inc(dropped)
        log.warning(
            "usage rows kept in the local spool",
            extra={"fields": {"rows": kept, "dropped": dropped, "reason": reason}},
        )
        self._metrics.usage_spool_bytes.set(self.spool.size())

    def _note_error(self, exc: BaseException) -> None:
        self._metrics.usage_write_errors.inc()
        self.last_error = (
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        )

    async def _insert(self, rows: list[UsageRow]) -> None:
        records = [_clean(r) for r in rows]
        async with self._sessions() as session:
            conn = await session.connection()
            if conn.dialect.name == "postgresql":
                # Binary COPY into a per-connection temp table, then one INSERT ... ON CONFLICT:
                # the CPU of a COPY, and a replayed row is skipped instead of duplicated.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                # The driver's own transaction: SQLAlchemy's adapter opens one only for the
                # statements it runs itself (and the temp table empties at each commit).
                async with raw.transaction():
                    await raw.execute(_CREATE_INCOMING)
                    await raw.copy_records_to_table(
                        "usage_incoming",
                        records=[tuple(getattr(r, c) for c in COLUMNS) for r in records],
                        columns=COLUMNS,
                    )
                    await raw.execute(_INSERT_INCOMING)
            else:
                stmt = sqlite.insert(USAGE_TABLE).on_conflict_do_nothing(index_elements=["row_id"])
                await session.execute(stmt, [{c: getattr(r, c) for c in COLUMNS} for r in records])
            await session.commit()

    async def _quarantine(self, row: UsageRow, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {str(exc)[:500]}"
        doc = json.dumps(row.to_json(), ensure_ascii=True)
        async with self._sessions() as session:
            conn = await session.connection()
            if conn.dialect.name == "postgresql":
                stmt: Any = postgresql.insert(QUARANTINE_TABLE).on_conflict_do_nothing(
                    index_elements=["row_id"]
                )
            else:
                stmt = sqlite.insert(QUARANTINE_TABLE).on_conflict_do_nothing(
                    index_elements=["row_id"]
                )
            await session.execute(
                stmt, {"row_id": str(row.row_id)[:32], "reason": reason, "row_json": doc}
            )
            await session.commit()
        self._metrics.usage_rows_quarantined.inc()
        log.error(
            "usage row quarantined (see table usage_quarantine)",
            extra={"fields": {"row_id": row.row_id, "reason": reason[:200]}},
        )

    async def _write_isolating(self, rows: list[UsageRow]) -> None:
        """Write ``rows``; a data error splits the batch until the bad row is alone and
        quarantined. Raises only when the database is unreachable (nothing is lost: the caller
        keeps or spools the rows)."""
        try:
            await self._insert(rows)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(rows) == 1:
                await self._quarantine(rows[0], exc)
                return
            mid = len(rows) // 2
            await self._write_isolating(rows[:mid])
            await self._write_isolating(rows[mid:])
            return
        self._metrics.usage_rows_written.inc(len(rows))
        self._last_ok = time.monotonic()

    async def _replay_spool(self) -> None:
        """Write the spooled files, oldest first; raises when the database is unreachable."""
        if self.spool is None:
            return
        for path in self.spool.files():
            rows = Spool.read(path)
            for i in range(0, len(rows), self._batch_size):
                await self._write_isolating(rows[i : i + self._batch_size])
            path.unlink(missing_ok=True)  # written (or already there: ON CONFLICT)
            self._metrics.usage_rows_replayed.inc(len(rows))
            log.info("usage spool file written", extra={"fields": {"rows": len(rows)}})
        self._metrics.usage_spool_bytes.set(self.spool.size())

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._replay_spool()
                await self._collect()
                await self._write_isolating(self._pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_error(exc)
                # The database is unreachable: keep every waiting row on disk, not in memory
                # (without a spool, the batch stays in memory and is retried).
                if self.spool is not None:
                    self._drain_queue_into_pending(limit=None)
                if self.spool is not None and self._pending:
                    self._spill(self._pending, reason="database unreachable")
                    self._pending = []
                log.warning(
                    "usage write failed; will retry",
                    extra={"fields": {"error": self.last_error, "retry_in_s": backoff}},
                )
                self.status()  # the stuck gauge, without waiting for a /ready call
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
                continue
            backoff = 0.5
            self.last_error = None
            self._pending = []
            if self._queue.empty() and (self.spool is None or not self.spool.files()):
                self._waiting_since = None
            self._metrics.usage_writer_stuck.set(0)  # it wrote
            self._metrics.usage_queue_depth.set(self._queue.qsize())
