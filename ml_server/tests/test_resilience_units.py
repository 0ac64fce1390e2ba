"""In-process checks of the resilience parts with a controlled clock (no server, no sleeping)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ml_server.config import SettingsError, load_settings
from ml_server.db.keys import KeyInfo
from ml_server.errors import ApiError
from ml_server.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    DeadlineWatch,
    RateLimiter,
    backoff_delay,
    parse_retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def test_breaker_opens_after_threshold_probes_once_and_closes(clock: Clock) -> None:
    b = CircuitBreaker("p", threshold=3, cooldown=10)
    b.failure()
    b.failure()
    b.success()  # not consecutive any more
    for _ in range(3):
        b.failure()
    assert b.state == OPEN and not b.allow()
    assert b.open_error().retry_after == "10"
    clock.now += 10
    assert b.allow() and b.state == HALF_OPEN  # the probe
    assert not b.allow()  # only one at a time
    b.failure()
    assert b.state == OPEN and b.opens == 2
    clock.now += 10
    assert b.allow()
    clock.now += 10  # the probe never reported: another one may go
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow()


def test_rate_limiter_bucket_refills_per_minute(clock: Clock) -> None:
    limiter = RateLimiter(default_rpm=0)
    free = KeyInfo(1, "free")
    for _ in range(1000):
        limiter.check(free)  # no default, no own limit
    key = KeyInfo(2, "limited", rpm=6)  # one request every 10 s, burst 6
    for _ in range(6):
        limiter.check(key)
    with pytest.raises(ApiError) as err:
        limiter.check(key)
    assert (err.value.status, err.value.retry_after) == (429, "10")
    clock.now += 10
    limiter.check(key)
    with pytest.raises(ApiError):
        limiter.check(key)
    assert limiter.limited == 2
    default = RateLimiter(default_rpm=1)
    default.check(KeyInfo(3, "d"))
    with pytest.raises(ApiError):
        default.check(KeyInfo(3, "d"))
    default.check(KeyInfo(3, "d", rpm=0))  # a key's 0 lifts the default


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = parse_retry_after(when)
    assert seconds is not None and 25 <= seconds <= 31
    assert parse_retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0


def test_backoff_has_full_jitter_under_the_cap() -> None:
    delays = [backoff_delay(5, 0.25, 4.0) for _ in range(500)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert min(delays) < 1.0 < max(delays)  # spread over the whole range, not a fixed step
    assert all(backoff_delay(0, 0.25, 4.0) <= 0.25 for _ in range(100))


async def test_deadline_watch_cancels_only_expired_tasks() -> None:
    watch = DeadlineWatch(tick=0.01)
    watch.start()
    loop = asyncio.get_running_loop()

    async def wait(deadline_in: float) -> str:
        task = asyncio.current_task()
        assert task is not None
        watch.inflight[task] = time.monotonic() + deadline_in
        try:
            await asyncio.sleep(0.3)
            return "finished"
        except asyncio.CancelledError:
            return "deadline" if watch.claim(task) else "cancelled"
        finally:
            watch.forget(task)

    late, early, external = (loop.create_task(wait(d)) for d in (0.05, 5, 5))
    await asyncio.sleep(0.02)
    external.cancel()
    results = await asyncio.gather(late, early, external)
    assert list(results) == ["deadline", "finished", "cancelled"]
    assert watch.inflight == {}
    await watch.stop()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MODEL_ALIASES", '{"a": "no-slash"}', "MODEL_ALIASES: 'a' -> 'no-slash'"),
        ("MODEL_ALIASES", '{"a": []}', "MODEL_ALIASES: 'a' has an empty list"),
        ("PROVIDER_TIMEOUTS", '{"nope": {"read": 1}}', "PROVIDER_TIMEOUTS: unknown provider"),
        ("PROVIDER_TIMEOUTS", '{"openai": {"total": 1}}', "allowed keys are 'connect' and 'read'"),
        ("REQUEST_DEADLINE_SECONDS", "0", "REQUEST_DEADLINE_SECONDS"),
        ("RATE_LIMIT_RPM", "-1", "RATE_LIMIT_RPM"),
    ],
)
def test_bad_resilience_settings_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings(secrets_dir="/nonexistent")


# --- the retry/fallback decision (a pure function) -------------------------------------------


def _decide(kind: str, **over: object) -> object:
    from ml_server.resilience import decide

    args: dict[str, object] = {
        "retries": 0,
        "max_retries": 2,
        "has_next": True,
        "retry_after": None,
        "now": 100.0,
        "deadline": 200.0,
        "backoff_base": 0.25,
        "backoff_max": 4.0,
        "retry_after_max": 20.0,
        "jitter": 1.0,
    }
    args.update(over)
    return decide(kind, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "over", "action", "delay"),
    [
        ("http_4xx", {}, "raise", 0.0),  # the request is at fault
        ("client", {}, "raise", 0.0),
        ("auth", {}, "next", 0.0),  # our credentials: another target, never the same again
        ("quota", {}, "next", 0.0),  # 402 / quota: the provider account
        ("circuit_open", {}, "next", 0.0),
        ("http_5xx", {}, "retry", 0.25),
        ("http_5xx", {"retries": 2, "max_retries": 3}, "retry", 1.0),
        ("http_5xx", {"retries": 2, "max_retries": 2}, "next", 0.0),
        ("timeout", {"retries": 5, "max_retries": 9}, "retry", 4.0),  # capped at backoff_max
        ("connection", {"jitter": 0.5}, "retry", 0.125),
        ("rate_limited", {}, "next", 0.0),  # someone else can answer now
        ("rate_limited", {"has_next": False, "retry_after": "3"}, "retry", 3.0),
        ("rate_limited", {"has_next": False, "retry_after": "60"}, "next", 0.0),  # too long
        ("http_5xx", {"now": 199.9}, "next", 0.0),  # the wait would pass the deadline
    ],
)
def test_decide(kind: str, over: dict[str, object], action: str, delay: float) -> None:
    d = _decide(kind, **over)
    assert (d.action, d.delay) == (action, delay)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "verdict"),
    [
        ("connection", "failure"),
        ("timeout", "failure"),
        ("http_5xx", "failure"),
        ("quota", "failure"),
        ("rate_limited", "none"),
        ("http_4xx", "success"),
        ("auth", "success"),
    ],
)
def test_breaker_verdict(kind: str, verdict: str) -> None:
    from ml_server.resilience import breaker_verdict

    assert breaker_verdict(kind) == verdict


def test_timeouts_count_for_the_breaker_only_before_the_first_byte() -> None:
    from ml_server.resilience import breaker_verdict

    assert breaker_verdict("timeout", before_first_byte=True) == "failure"
    assert breaker_verdict("timeout", before_first_byte=False) == "none"
    assert breaker_verdict("connection", before_first_byte=False) == "failure"
    assert breaker_verdict("http_5xx", before_first_byte=False) == "failure"


async def test_fair_share_gives_a_freed_slot_to_the_key_holding_fewest() -> None:
    from ml_server.resilience import FairShare

    slots = FairShare("p", 4)
    for _ in range(4):
        await slots.acquire("a")
    order: list[str] = []

    async def wait(key: str) -> None:
        await slots.acquire(key)
        order.append(key)

    waiters = [asyncio.ensure_future(wait(k)) for k in ("a", "a", "b", "a", "c")]
    await asyncio.sleep(0)
    assert slots.waiting == 5 and order == []
    for _ in range(3):
        slots.release("a")
        await asyncio.sleep(0)
    assert order == ["b", "c", "a"]  # b and c (0 held) before a's older requests
    assert slots.held == {"a": 2, "b": 1, "c": 1}
    # A waiter that leaves gives up its place, and a granted slot is not lost.
    waiters[3].cancel()
    await asyncio.sleep(0)
    slots.release("b")
    await asyncio.sleep(0)
    assert order == ["b", "c", "a", "a"] and slots.waiting == 0
    assert slots.in_use == 4
    for w in waiters:
        if not w.done():
            w.cancel()


async def test_fair_share_without_capacity_never_waits() -> None:
    from ml_server.resilience import FairShare

    slots = FairShare("p", 0)
    for _ in range(1000):
        await slots.acquire("a")
    slots.release("a")
    assert slots.in_use == 0 and slots.waiting == 0
