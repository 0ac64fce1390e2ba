"""Limits hold across a fleet: 3 real server processes, one PostgreSQL, keys from the admin API.

Each test offers one key's traffic to the three servers in turn at a fixed rate, counts what the
fleet admitted, and checks it against the bound of docs/ml-server.md ("Limits across the fleet"):
``limit + refill + min((N - 1) * limit, 2 * rate * (I + d))`` with I = LIMITS_SYNC_SECONDS and d
the longest sync round trip the servers report. Each also checks that the fleet admitted less
than N separate processes would have (N x the limit): the limit is shared, not per process.
Figures are printed (``pytest -s``) as ``FLEET ...`` lines.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

N = 3
SYNC_SECONDS = 0.2
ADMIN_KEY = "hsa-test-fleet-admin-key-not-real-42"
# "count these words" costs 3 prompt + 4 completion tokens at the fake provider.
TOKENS_PER_REQUEST = 7
# catalog_budget_fixture.yaml: $100,000 per million tokens, so $0.70 a request.
USD_PER_REQUEST = 0.7


@pytest.fixture(scope="module")
def fleet(pg: TempPostgres, fake: FakeProvider) -> Iterator[list[ServerProcess]]:
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "ADMIN_API_KEY": ADMIN_KEY,
        "LIMITS_SYNC_SECONDS": str(SYNC_SECONDS),
        "KEY_CACHE_SECONDS": "30",  # as in production: no key lookup per request
        "PROVIDER_TIMEOUT_SECONDS": "10",
        "MODEL_CATALOG_FILE": str(Path(__file__).resolve().parent / "catalog_budget_fixture.yaml"),
    }
    procs = [ServerProcess(env) for _ in range(N)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


def _create_key(server: ServerProcess, **fields: object) -> str:
    r = httpx.post(
        server.url + "/admin/keys",
        json={"name": f"fleet-{time.monotonic_ns()}", **fields},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=20,
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


@dataclass
class Outcome:
    status: int
    started: float
    ended: float
    server: int


async def _offer(
    fleet: list[ServerProcess], key: str, *, rate: float, seconds: float, model: str
) -> list[Outcome]:
    """Send ``rate`` requests per second for ``seconds``, round-robin over the servers, without
    waiting for answers (an open loop: the offered rate does not depend on the fleet)."""
    body = {"model": model, "messages": [{"role": "user", "content": "count these words"}]}
    out: list[Outcome] = []
    errors: list[dict[str, object]] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as client:

        async def one(i: int) -> None:
            server = fleet[i % len(fleet)]
            started = time.monotonic()
            r = await client.post(server.url + "/v1/chat/completions", json=body)
            out.append(Outcome(r.status_code, started, time.monotonic(), i % len(fleet)))
            assert r.status_code in (200, 429), r.text
            if r.status_code == 429:
                errors.append(r.json()["error"])

        # Warm one connection per server (and each server's key cache) with a models call.
        for s in fleet:
            assert (await client.get(s.url + "/v1/models")).status_code == 200
        tasks = []
        t0 = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    LAST_ERRORS[:] = errors
    return out


LAST_ERRORS: list[dict[str, object]] = []


def _sync_round_trip_max(fleet: list[ServerProcess]) -> float:
    worst = 0.0
    for s in fleet:
        text = httpx.get(s.url + "/metrics", timeout=10).text
        m = re.search(r"^mlserver_limits_sync_seconds_max (\S+)$", text, re.M)
        assert m, "mlserver_limits_sync_seconds_max missing"
        worst = max(worst, float(m.group(1)))
    return worst


def _report(name: str, limit: float, admitted: float, allowed: float, bound: float) -> None:
    print(
        f"\nFLEET {name}: N={N} I={SYNC_SECONDS}s limit={limit:g} admitted={admitted:g} "
        f"limit+refill={allowed:.1f} overshoot={admitted - allowed:+.1f} "
        f"bound=+{bound:.1f} (N separate processes: {N * limit:g})"
    )


async def test_rpm_holds_across_processes(fleet: list[ServerProcess]) -> None:
    limit, rate, seconds = 30, 30.0, 2.0
    key = _create_key(fleet[0], rpm=limit)
    outcomes = await _offer(fleet, key, rate=rate, seconds=seconds, model="openai/gpt-4o")
    admitted = sum(o.status == 200 for o in outcomes)
    span = max(o.started for o in outcomes) - min(o.started for o in outcomes)
    d = _sync_round_trip_max(fleet)
    allowed = limit + limit / 60 * span
    bound = min((N - 1) * limit, 2 * rate * (SYNC_SECONDS + d))
    _report("rpm", limit, admitted, allowed, bound)
    assert admitted >= limit  # the limit was reached, not undercut
    assert admitted <= allowed + bound
    assert admitted < N * limit  # shared: three processes did not each grant the limit
    assert {o.server for o in outcomes if o.status == 429} == set(range(N))


async def test_tpm_holds_across_processes(fleet: list[ServerProcess]) -> None:
    limit, rate, seconds = 70, 30.0, 2.0  # 70 tokens = 10 requests
    key = _create_key(fleet[1], tpm=limit)
    outcomes = await _offer(fleet, key, rate=rate, seconds=seconds, model="openai/gpt-4o")
    ok = [o for o in outcomes if o.status == 200]
    admitted = len(ok) * TOKENS_PER_REQUEST
    span = max(o.started for o in outcomes) - min(o.started for o in outcomes)
    d = _sync_round_trip_max(fleet)
    allowed = limit + limit / 60 * span
    # Tokens are known when a request ends: the ones in flight when the limit is reached add
    # theirs (at most rate x the longest request, plus one per process).
    in_flight = rate * max(o.ended - o.started for o in ok) + N
    token_rate = rate * TOKENS_PER_REQUEST
    bound = (
        min((N - 1) * limit, 2 * token_rate * (SYNC_SECONDS + d)) + in_flight * TOKENS_PER_REQUEST
    )
    _report("tpm", limit, admitted, allowed, bound)
    assert admitted >= limit
    assert admitted <= allowed + bound
    assert len(ok) < len(outcomes)


async def test_concurrency_holds_across_processes(fleet: list[ServerProcess]) -> None:
    limit, rate, seconds = 4, 5.0, 3.0  # requests last 3.5 s: all of them overlap
    key = _create_key(fleet[2], max_concurrent=limit)
    outcomes = await _offer(fleet, key, rate=rate, seconds=seconds, model="openai/gpt-slow-3500")
    ok = [o for o in outcomes if o.status == 200]
    events = sorted([(o.started, 1) for o in ok] + [(o.ended, -1) for o in ok])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    d = _sync_round_trip_max(fleet)
    bound = min((N - 1) * limit, 2 * rate * (SYNC_SECONDS + d))
    _report("concurrency", limit, peak, limit, bound)
    assert peak >= limit
    assert peak <= limit + bound
    assert peak < N * limit
    # The slots come back: once those requests are done, the key is admitted again.
    again = await _offer(fleet, key, rate=10, seconds=0.3, model="openai/gpt-4o")
    assert all(o.status == 200 for o in again)


async def test_daily_budget_holds_across_processes(
    fleet: list[ServerProcess], pg: TempPostgres
) -> None:
    budget, rate, seconds = 7.0, 5.0, 4.0  # $7 = 10 requests
    key = _create_key(fleet[0], budget_daily_usd=budget)
    outcomes = await _offer(fleet, key, rate=rate, seconds=seconds, model="openai/gpt-test-budget")
    ok = [o for o in outcomes if o.status == 200]
    spent = len(ok) * USD_PER_REQUEST
    d = _sync_round_trip_max(fleet)
    # Spend is charged when a request ends: those in flight at the crossing add theirs.
    in_flight = rate * max(o.ended - o.started for o in ok) + N
    usd_rate = rate * USD_PER_REQUEST
    bound = min((N - 1) * budget, 2 * usd_rate * (SYNC_SECONDS + d)) + in_flight * USD_PER_REQUEST
    _report("budget_daily_usd", budget, spent, budget, bound)
    assert spent >= budget
    assert spent <= budget + bound
    assert spent < N * budget
    err = next(e for e in LAST_ERRORS if e["code"] == "budget_exceeded")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert err["type"] == "insufficient_quota" and err["param"] == "budget_daily_usd"
    assert "daily budget of $7.00" in str(err["message"])
    assert f"resets at {tomorrow}T00:00:00Z" in str(err["message"])

    # The shared counter is the sum of the costs written with the usage rows.
    conn = await asyncpg.connect(pg.dsn)
    try:
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", key[:10])
        deadline = time.monotonic() + 20
        rows_cost = None
        while time.monotonic() < deadline:
            rows_cost = await conn.fetchval(
                "SELECT sum(cost_usd) FROM usage WHERE api_key_id = $1", key_id
            )
            if rows_cost is not None and float(rows_cost) >= spent - 1e-9:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(3 * SYNC_SECONDS)
        counter = await conn.fetchval(
            "SELECT usd FROM spend_counters WHERE key_id = $1 AND period = 'day'", key_id
        )
    finally:
        await conn.close()
    assert rows_cost is not None and abs(float(rows_cost) - spent) < 1e-6
    assert counter is not None and abs(float(counter) - float(rows_cost)) < 1e-6


async def test_monthly_budget_holds_across_processes(
    fleet: list[ServerProcess], pg: TempPostgres
) -> None:
    """Spend earlier this month counts (seeded in the fleet's month counter, as the servers
    wrote it on earlier days), last month's does not, and the 429 names the monthly budget."""
    budget, earlier, rate, seconds = 7.0, 3.5, 5.0, 3.0  # $3.50 left = 5 requests
    # A daily budget well above the monthly one: the refusal must come from the month.
    key = _create_key(fleet[1], budget_monthly_usd=budget, budget_daily_usd=1000)
    today = datetime.now(UTC).date()
    this_month = today.replace(day=1)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    next_month = (this_month + timedelta(days=32)).replace(day=1)
    conn = await asyncpg.connect(pg.dsn)
    try:
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", key[:10])
        await conn.executemany(
            "INSERT INTO spend_counters (key_id, period, period_start, usd) "
            "VALUES ($1, $2, $3, $4)",
            [(key_id, "month", this_month, earlier), (key_id, "month", last_month, 5000)],
        )
    finally:
        await conn.close()

    outcomes = await _offer(fleet, key, rate=rate, seconds=seconds, model="openai/gpt-test-budget")
    ok = [o for o in outcomes if o.status == 200]
    spent = earlier + len(ok) * USD_PER_REQUEST
    d = _sync_round_trip_max(fleet)
    in_flight = rate * max(o.ended - o.started for o in ok) + N
    usd_rate = rate * USD_PER_REQUEST
    bound = min((N - 1) * budget, 2 * usd_rate * (SYNC_SECONDS + d)) + in_flight * USD_PER_REQUEST
    _report("budget_monthly_usd", budget, spent, budget, bound)
    assert spent >= budget  # last month's $5,000 did not count
    assert spent <= budget + bound
    assert len(ok) < len(outcomes)
    err = next(e for e in LAST_ERRORS if e["code"] == "budget_exceeded")
    assert err["type"] == "insufficient_quota" and err["param"] == "budget_monthly_usd", err
    assert "monthly budget of $7.00" in str(err["message"])
    assert f"resets at {next_month.isoformat()}T00:00:00Z" in str(err["message"])

    # Every server refuses now, with Retry-After until the first of next month (UTC).
    await asyncio.sleep(3 * SYNC_SECONDS)
    reset = datetime(next_month.year, next_month.month, next_month.day, tzinfo=UTC)
    body = {"model": "openai/gpt-test-budget", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=20) as c:
        for server in fleet:
            r = await c.post(server.url + "/v1/chat/completions", json=body)
            assert r.status_code == 429 and r.json()["error"]["param"] == "budget_monthly_usd"
            wait = int(r.headers["retry-after"])
            assert abs(wait - (reset - datetime.now(UTC)).total_seconds()) < 10, wait

    conn = await asyncpg.connect(pg.dsn)
    try:
        counters = dict(
            await conn.fetch(
                "SELECT period_start, usd FROM spend_counters "
                "WHERE key_id = $1 AND period = 'month'",
                key_id,
            )
        )
    finally:
        await conn.close()
    assert abs(float(counters[this_month]) - spent) < 1e-6
    assert float(counters[last_month]) == 5000
