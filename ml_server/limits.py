"""Per-key limits and budgets that hold across processes and instances (the "governor").

Every request is decided from this process's memory; PostgreSQL holds the fleet's shared state,
and each process reconciles with it every ``LIMITS_SYNC_SECONDS`` (I) in one background task:

- **RPM and TPM**: one token bucket per key and kind in ``limit_buckets`` (capacity = the limit,
  refilled at limit/60 per second). A process sends what it consumed since its last sync; the
  database refills the bucket for the elapsed time, subtracts every process's consumption and
  returns the fleet's level. Between syncs the process sees ``level + refill - own use``. The
  level may go below zero (fleet overshoot): that debt is repaid before anyone is admitted again.
- **Max concurrent**: each process publishes its in-flight count per key in ``limit_inflight``
  and reads the sum of the others' (rows older than a few intervals are ignored: dead processes).
- **Budgets**: the cost of each usage row (``cost_usd``, priced by the accounting) is added to
  ``spend_counters`` per key and UTC day / month; admission compares the fleet's spend with the
  key's budget.

Accuracy (docs/ml-server.md, "Limits across the fleet"): a process's view of the others is at most
``2 (I + d)`` old (d: one sync round trip), so across N processes a limit L overshoots by at most
``min((N - 1) L, 2 λ (I + d))``, where λ is the rate (per second) at which the fleet admits that
key's requests (tokens, dollars) while the limit is reached; costs and tokens are known only when
a request ends, so requests already in flight add their own on top.

The first request of a key in a process waits for one sync of that key (one database round trip
per key per process); afterwards no request waits for the database. When the database cannot be
reached, each process keeps enforcing from its own view (fail open for the fleet part only).
Without PostgreSQL (SQLite, ``make serve``) the same buckets run in this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_server.errors import ApiError
from ml_server.tasks import cancel_and_wait
from ml_server.usage import UsageRecorder, UsageRow

if TYPE_CHECKING:
    from starlette.requests import Request

    from ml_server.db.keys import KeyInfo
    from ml_server.resilience import RateLimiter

log = logging.getLogger(__name__)

IDLE_FORGET_SECONDS = 300.0  # a key unused this long in this process is dropped from its memory
FIRST_SYNC_TIMEOUT_SECONDS = 2.0
STALE_CLEANUP_EVERY = 600  # syncs between deletions of dead processes' in-flight rows


@dataclass(frozen=True)
class KeyPolicy:
    """A key's governance settings (``api_keys`` columns; None = no such limit)."""

    owner: str | None = None
    allowed_models: tuple[str, ...] = ()  # globs; empty = every model
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_daily_usd: float | None = None
    budget_monthly_usd: float | None = None
    expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> KeyPolicy:
        """From an ``ApiKey`` row."""
        return cls(
            owner=row.owner,
            allowed_models=tuple(parse_models(row.allowed_models)),
            tpm=row.tpm,
            max_concurrent=row.max_concurrent,
            budget_daily_usd=_float(row.budget_daily_usd),
            budget_monthly_usd=_float(row.budget_monthly_usd),
            expires_at=_aware(row.expires_at),
        )

    def allows(self, *names: str) -> bool:
        """True when any of ``names`` (as asked, as resolved) matches an allowed glob.

        A glob without ``/`` (``claude-*``) also matches the model's name after its provider
        (``anthropic/claude-haiku-4-5``); one with ``/`` (``openai/*``) matches the full name.
        """
        if not self.allowed_models:
            return True
        candidates = [n for n in names if n]
        candidates += [n.partition("/")[2] for n in candidates if "/" in n]
        return any(
            fnmatch.fnmatchcase(n, p)
            for p in self.allowed_models
            for n in (candidates if "/" not in p else names)
            if n
        )


def parse_models(value: str | None) -> list[str]:
    """The stored JSON list of model globs (None or empty = all models)."""
    if not value:
        return []
    data = json.loads(value)
    return [str(x) for x in data] if isinstance(data, list) else []


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite returns naive UTC datetimes
        return value.replace(tzinfo=UTC)
    return value


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _iso(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


@dataclass
class _Bucket:
    cap: float  # the limit per minute
    level: float  # fleet level at the last sync (may be negative: debt)
    at: float  # monotonic time of that level
    pending: float = 0.0  # consumed here since the last sync

    def view(self, now: float) -> float:
        return min(self.cap, self.level + (now - self.at) * self.cap / 60.0) - self.pending

    def retune(self, cap: float) -> None:
        if cap != self.cap:
            self.level = min(self.level, cap)
            self.cap = cap


@dataclass
class _KeyState:
    key_id: int
    rpm: _Bucket | None = None
    tpm: _Bucket | None = None
    max_concurrent: int | None = None
    inflight: int = 0
    published_inflight: int = 0
    others_inflight: int = 0
    budget_daily: float | None = None
    budget_monthly: float | None = None
    day: date = field(default_factory=lambda: datetime.now(UTC).date())
    day_usd: float = 0.0
    month_usd: float = 0.0
    pending_usd: float = 0.0
    used_at: float = field(default_factory=time.monotonic)
    synced: asyncio.Future[None] | None = None


class Governor:
    """Admits requests per key (expiry, allowed models, budgets, RPM, TPM, concurrency).

    Args:
        engine: the server's engine; shared state only on PostgreSQL.
        default_rpm: RPM of keys without their own (``RATE_LIMIT_RPM``); 0 = none.
        sync_seconds: I, the reconcile interval (``LIMITS_SYNC_SECONDS``).
        counts: the ``RateLimiter`` whose ``limited`` counter ``/metrics`` exports
            (``mlserver_rate_limited_requests_total``): every refusal here counts there.
        resolve: maps a requested model to its ``provider/model`` label (aliases), for the
            allow-list; may raise for unknown models.
    """

    def __init__(
        self,
        engine: AsyncEngine | None,
        *,
        default_rpm: int,
        sync_seconds: float,
        counts: RateLimiter | None = None,
        resolve: Callable[[str], str] | None = None,
    ) -> None:
        self.engine = engine
        self.shared = engine is not None and engine.url.get_backend_name() == "postgresql"
        self.default_rpm = default_rpm
        self.sync_seconds = sync_seconds
        self.counts = counts
        self.resolve = resolve
        self.process_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{os.urandom(3).hex()}"
        self._keys: dict[int, _KeyState] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.refused: dict[str, int] = {}
        self.sync_count = 0
        self.sync_errors = 0
        self.sync_seconds_max = 0.0  # d, the longest reconcile round trip seen
        self.sync_seconds_last = 0.0

    # --- the hot path ---------------------------------------------------------------------

    async def admit(self, request: Request, key: KeyInfo) -> None:
        """Decide one request of ``key``; on success hold a concurrency slot until
        :meth:`release` (``GatewayApp`` calls it when the response is done).

        Raises:
            ApiError: 401 expired, 403 model not allowed, 429 budget / RPM / TPM / concurrency.
        """
        policy: KeyPolicy = getattr(key, "policy", None) or KeyPolicy()
        if policy.expires_at is not None and policy.expires_at <= datetime.now(UTC):
            self._refuse("expired")
            raise ApiError(
                401,
                f"This API key expired at {policy.expires_at.isoformat()}",
                type="invalid_request_error",
                code="api_key_expired",
                kind="client",
            )
        if policy.allowed_models:
            await self._check_model(request, policy)
        rpm = key.rpm if key.rpm is not None else self.default_rpm
        if not (rpm or policy.tpm or policy.max_concurrent or policy.budget_daily_usd) and not (
            policy.budget_monthly_usd
        ):
            return
        ks = self._keys.get(key.id)
        if ks is None:
            ks = self._keys[key.id] = _KeyState(key.id)
        self._configure(ks, rpm, policy)
        if ks.synced is None:
            ks.synced = asyncio.ensure_future(self._first_sync(ks))
        if not ks.synced.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(ks.synced), FIRST_SYNC_TIMEOUT_SECONDS)
        now = time.monotonic()
        ks.used_at = now
        self._check_budgets(ks)
        if ks.rpm is not None and ks.rpm.view(now) < 1.0:
            self._refuse("rpm")
            wait = max(1, math.ceil((1.0 - ks.rpm.view(now)) * 60.0 / ks.rpm.cap))
            raise ApiError(
                429,
                f"Rate limit reached for this API key: {int(ks.rpm.cap)} requests per minute; "
                f"retry in {wait} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                kind="rate_limited",
                retry_after=str(wait),
            )
        if ks.tpm is not None and ks.tpm.view(now) <= 0.0:
            self._refuse("tpm")
            wait = max(1, math.ceil((1.0 - ks.tpm.view(now)) * 60.0 / ks.tpm.cap))
            raise ApiError(
                429,
                f"Rate limit reached for this API key: {int(ks.tpm.cap)} tokens per minute; "
                f"retry in {wait} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                kind="rate_limited",
                retry_after=str(wait),
            )
        if ks.max_concurrent is not None and ks.inflight + ks.others_inflight >= ks.max_concurrent:
            self._refuse("concurrency")
            raise ApiError(
                429,
                f"Too many concurrent requests for this API key: at most {ks.max_concurrent} "
                "at a time across the fleet",
                type="rate_limit_error",
                code="concurrency_limit_exceeded",
                kind="rate_limited",
                retry_after="1",
            )
        if ks.rpm is not None:
            ks.rpm.pending += 1.0
        ks.inflight += 1
        request.scope["state"]["governed"] = ks

    def release(self, scope_state: dict[str, Any]) -> None:
        """End of a request admitted by :meth:`admit` (idempotent)."""
        ks = scope_state.pop("governed", None)
        if ks is not None:
            ks.inflight -= 1

    def record_usage(self, key_id: int | None, tokens: int, cost_usd: Any) -> None:
        """Charge a finished request's tokens and cost (the same values as its usage row)."""
        if key_id is None:
            return
        ks = self._keys.get(key_id)
        if ks is None:
            return
        if ks.tpm is not None and tokens:
            ks.tpm.pending += tokens
        if cost_usd is not None and (ks.budget_daily is not None or ks.budget_monthly is not None):
            ks.pending_usd += float(cost_usd)

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self.counts is not None:
            self.counts.limited += 1

    async def _check_model(self, request: Request, policy: KeyPolicy) -> None:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return  # json_body answers 400 next
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return  # the endpoint answers 422 (model is required)
        resolved = ""
        if self.resolve is not None:
            with contextlib.suppress(Exception):
                resolved = self.resolve(model)
        if not policy.allows(model, resolved):
            self._refuse("model")
            raise ApiError(
                403,
                f"The model {model!r} is not allowed for this API key "
                f"(allowed: {', '.join(policy.allowed_models)})",
                type="invalid_request_error",
                code="model_not_allowed",
                kind="client",
                param="model",
            )

    def _configure(self, ks: _KeyState, rpm: int, policy: KeyPolicy) -> None:
        now = time.monotonic()
        if rpm:
            if ks.rpm is None:
                ks.rpm = _Bucket(float(rpm), float(rpm), now)
            ks.rpm.retune(float(rpm))
        else:
            ks.rpm = None
        if policy.tpm:
            if ks.tpm is None:
                ks.tpm = _Bucket(float(policy.tpm), float(policy.tpm), now)
            ks.tpm.retune(float(policy.tpm))
        else:
            ks.tpm = None
        ks.max_concurrent = policy.max_concurrent or None
        ks.budget_daily = policy.budget_daily_usd
        ks.budget_monthly = policy.budget_monthly_usd

    def _check_budgets(self, ks: _KeyState) -> None:
        if ks.budget_daily is None and ks.budget_monthly is None:
            return
        today = datetime.now(UTC).date()
        day_usd, month_usd = ks.day_usd, ks.month_usd
        if today != ks.day:  # a new UTC day (or month) since the last sync
            day_usd = 0.0
            if month_start(today) != month_start(ks.day):
                month_usd = 0.0
        day_usd += ks.pending_usd
        month_usd += ks.pending_usd
        for label, budget, spent, resets in (
            ("daily", ks.budget_daily, day_usd, today + timedelta(days=1)),
            ("monthly", ks.budget_monthly, month_usd, next_month(today)),
        ):
            if budget is not None and spent >= budget:
                self._refuse("budget")
                reset_at = datetime(resets.year, resets.month, resets.day, tzinfo=UTC)
                wait = max(1, math.ceil((reset_at - datetime.now(UTC)).total_seconds()))
                raise ApiError(
                    429,
                    f"Budget exceeded for this API key: the {label} budget of "
                    f"${budget:.2f} is spent (${spent:.4f}); it resets at {_iso(resets)}",
                    type="insufficient_quota",
                    code="budget_exceeded",
                    kind="rate_limited",
                    param=f"budget_{label}_usd",
                    retry_after=str(wait),
                )

    # --- reconciliation --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="limits-sync")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.shared and self._keys:
            with contextlib.suppress(Exception):
                for ks in self._keys.values():
                    ks.inflight = 0
                async with asyncio.timeout(2):
                    await self.sync_once()  # publish our last consumption and zero in-flight

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.sync_errors += 1
                log.warning(
                    "limits sync failed; enforcing from this process's view",
                    extra={"fields": {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}},
                )

    async def _first_sync(self, ks: _KeyState) -> None:
        try:
            async with self._lock:
                await self._sync([ks])
        except Exception as exc:
            self.sync_errors += 1
            log.warning(
                "limits: first sync of a key failed; using this process's view",
                extra={"fields": {"key_id": ks.key_id, "error": type(exc).__name__}},
            )

    async def sync_once(self) -> None:
        now = time.monotonic()
        for key_id in [k for k, s in self._keys.items() if self._idle(s, now)]:
            del self._keys[key_id]
        async with self._lock:
            await self._sync(list(self._keys.values()))

    @staticmethod
    def _idle(ks: _KeyState, now: float) -> bool:
        return (
            ks.inflight == 0
            and ks.published_inflight == 0
            and now - ks.used_at > IDLE_FORGET_SECONDS
            and (ks.rpm is None or ks.rpm.pending == 0)
            and (ks.tpm is None or ks.tpm.pending == 0)
            and ks.pending_usd == 0
        )

    async def _sync(self, states: Sequence[_KeyState]) -> None:
        if not states:
            return
        started = time.monotonic()
        if not self.shared or self.engine is None:
            self._sync_local(states, started)
            return
        async with asyncio.timeout(max(2.0, 4 * self.sync_seconds)):
            async with self.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await self._sync_buckets(driver, states, started)
                await self._sync_inflight(driver, states)
                await self._sync_spend(driver, states)
        elapsed = time.monotonic() - started
        self.sync_count += 1
        self.sync_seconds_last = elapsed
        self.sync_seconds_max = max(self.sync_seconds_max, elapsed)

    def _sync_local(self, states: Iterable[_KeyState], now: float) -> None:
        today = datetime.now(UTC).date()
        for ks in states:
            for b in (ks.rpm, ks.tpm):
                if b is not None:
                    b.level, b.at, b.pending = b.view(now), now, 0.0
            ks.others_inflight = 0
            if ks.day != today:
                ks.day_usd = 0.0
                if month_start(today) != month_start(ks.day):
                    ks.month_usd = 0.0
                ks.day = today
            ks.day_usd += ks.pending_usd
            ks.month_usd += ks.pending_usd
            ks.pending_usd = 0.0
        self.sync_count += 1

    async def _sync_buckets(self, db: Any, states: Sequence[_KeyState], sent_at: float) -> None:
        rows: list[tuple[int, str, _Bucket, float]] = []
        for ks in sorted(states, key=lambda s: s.key_id):  # one lock order for every process
            for kind, b in (("requests", ks.rpm), ("tokens", ks.tpm)):
                if b is not None:
                    rows.append((ks.key_id, kind, b, b.pending))
        if not rows:
            return
        result = await db.fetch(
            _BUCKETS_SQL,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2].cap for r in rows],
            [r[3] for r in rows],
        )
        levels = {(rec["key_id"], rec["kind"]): float(rec["tokens"]) for rec in result}
        for key_id, kind, b, sent in rows:
            level = levels.get((key_id, kind))
            if level is None:
                continue
            b.level, b.at = level, sent_at
            b.pending -= sent

    async def _sync_inflight(self, db: Any, states: Sequence[_KeyState]) -> None:
        chosen = [
            ks for ks in states if ks.max_concurrent is not None or ks.published_inflight != 0
        ]
        if not chosen:
            return
        chosen.sort(key=lambda s: s.key_id)
        counts = [ks.inflight for ks in chosen]
        result = await db.fetch(
            _INFLIGHT_SQL,
            self.process_id,
            [ks.key_id for ks in chosen],
            counts,
            max(3.0, 4 * self.sync_seconds),
        )
        if self.sync_count % STALE_CLEANUP_EVERY == 0:  # rows of processes gone for an hour
            await db.execute("DELETE FROM limit_inflight WHERE seen_at < now() - interval '1 hour'")
        others = {rec["key_id"]: int(rec["n"]) for rec in result}
        for ks, n in zip(chosen, counts, strict=True):
            ks.published_inflight = n
            ks.others_inflight = others.get(ks.key_id, 0)

    async def _sync_spend(self, db: Any, states: Sequence[_KeyState]) -> None:
        chosen = sorted(
            (s for s in states if s.budget_daily is not None or s.budget_monthly is not None),
            key=lambda s: s.key_id,
        )
        if not chosen:
            return
        today = datetime.now(UTC).date()
        sent = [ks.pending_usd for ks in chosen]
        ids = [ks.key_id for ks in chosen]
        result = await db.fetch(_SPEND_SQL, ids, sent, today, month_start(today))
        spent = {(rec["key_id"], rec["period"]): float(rec["usd"]) for rec in result}
        for ks, usd in zip(chosen, sent, strict=True):
            ks.pending_usd -= usd
            ks.day = today
            ks.day_usd = spent.get((ks.key_id, "day"), 0.0)
            ks.month_usd = spent.get((ks.key_id, "month"), 0.0)


# The fleet bucket: a new row starts full minus this use; an existing one is refilled for the
# time since its last update, then loses every process's use. Debt is kept down to one bucket's
# worth (-cap), so an overshoot never locks a key out for more than about two minutes.
# (A row another process inserts in the same instant is in neither part: that use stays pending
# here and goes with the next sync.) Rows are locked in key order: no deadlock between
# processes.
_BUCKETS_SQL = """
WITH u AS (
  SELECT * FROM unnest($1::int[], $2::text[], $3::float8[], $4::float8[]) AS u(k, kind, cap, used)
), ins AS (
  INSERT INTO limit_buckets (key_id, kind, tokens, updated_at)
  SELECT k, kind, cap - used, now() FROM u ORDER BY k, kind
  ON CONFLICT (key_id, kind) DO NOTHING
  RETURNING key_id, kind, tokens
), locked AS (
  SELECT key_id, kind FROM limit_buckets WHERE key_id = ANY($1::int[])
  ORDER BY key_id, kind FOR UPDATE
), upd AS (
  UPDATE limit_buckets AS b SET
    tokens = GREATEST(-u.cap, LEAST(u.cap,
      b.tokens + EXTRACT(EPOCH FROM (now() - b.updated_at))::float8 * u.cap / 60.0) - u.used),
    updated_at = now()
  FROM u JOIN locked AS l ON l.key_id = u.k AND l.kind = u.kind
  WHERE b.key_id = u.k AND b.kind = u.kind
  RETURNING b.key_id, b.kind, b.tokens
)
SELECT key_id, kind, tokens FROM ins UNION ALL SELECT key_id, kind, tokens FROM upd
"""

_INFLIGHT_SQL = """
WITH mine AS (
  INSERT INTO limit_inflight (process_id, key_id, inflight, seen_at)
  SELECT $1, k, n, now() FROM unnest($2::int[], $3::int[]) AS u(k, n)
  ON CONFLICT (process_id, key_id) DO UPDATE SET inflight = EXCLUDED.inflight,
    seen_at = EXCLUDED.seen_at
  RETURNING key_id
)
SELECT key_id, COALESCE(SUM(inflight), 0) AS n FROM limit_inflight
WHERE key_id = ANY($2::int[]) AND process_id <> $1
  AND seen_at > now() - make_interval(secs => $4::float8)
GROUP BY key_id
"""

_SPEND_SQL = """
INSERT INTO spend_counters AS s (key_id, period, period_start, usd)
SELECT k, p.period, p.start, usd::numeric
FROM unnest($1::int[], $2::float8[]) AS u(k, usd)
CROSS JOIN (VALUES ('day', $3::date), ('month', $4::date)) AS p(period, start)
ORDER BY k, p.period
ON CONFLICT (key_id, period, period_start) DO UPDATE SET usd = s.usd + EXCLUDED.usd
RETURNING s.key_id, s.period, s.usd
"""


class GovernedUsageRecorder(UsageRecorder):
    """The usage recorder, also charging each row's tokens and cost to the key's limits."""

    governor: Governor | None = None

    def record(self, row: UsageRow) -> None:
        super().record(row)
        if self.governor is not None:
            self.governor.record_usage(
                row.api_key_id,
                row.prompt_tokens + row.completion_tokens,
                getattr(row, "cost_usd", None),
            )


class GovernorCollector(Collector):
    """Exports the governor's counters at scrape time (nothing on the request path)."""

    def __init__(self, governor: Governor) -> None:
        self._g = governor

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        refused = CounterMetricFamily(
            "mlserver_limit_refusals",
            "Requests refused by key governance, by reason "
            "(rpm, tpm, concurrency, budget, model, expired)",
            labels=["reason"],
        )
        for reason, n in sorted(self._g.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily(
            "mlserver_limits_syncs", "Reconciliations with the shared state", self._g.sync_count
        )
        yield CounterMetricFamily(
            "mlserver_limits_sync_errors", "Failed reconciliations", self._g.sync_errors
        )
        yield GaugeMetricFamily(
            "mlserver_limits_sync_seconds_max",
            "Longest reconciliation round trip so far (d in the accuracy bound)",
            self._g.sync_seconds_max,
        )
