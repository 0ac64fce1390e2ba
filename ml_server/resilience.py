"""Resilience building blocks: circuit breakers, retry timing, per-key rate limits, their metrics.

Everything here is in-memory and per process. On the happy path a request costs a breaker-state
check, a dict insert/delete for the deadline watch and, only when a limit applies, a token-bucket
update: no timer, no extra await.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ml_server.errors import ApiError
from ml_server.providers.base import ProviderError
from ml_server.tasks import cancel_and_wait

if TYPE_CHECKING:
    from ml_server.db.keys import KeyInfo

CLOSED = 0
HALF_OPEN = 1
OPEN = 2
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}


class CircuitBreaker:
    """Per-provider breaker.

    Opens after ``threshold`` consecutive failures (connection errors, timeouts, 5xx); while open,
    calls fail fast. After ``cooldown`` seconds one probe call is let through (half-open): success
    closes the breaker, failure opens it again for another cool-down. A probe that never reports
    (e.g. its client went away) is replaced by a new one after another cool-down.

    Args:
        name: the provider's name (metric label).
        threshold: consecutive failures that open the breaker.
        cooldown: seconds the breaker stays open before a probe.
    """

    __slots__ = (
        "cooldown",
        "failures",
        "name",
        "opened_at",
        "opens",
        "probe_at",
        "state",
        "threshold",
    )

    def __init__(self, name: str, *, threshold: int, cooldown: float) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probe_at = 0.0
        self.opens = 0

    def allow(self) -> bool:
        """May a call go to the provider now? (Callers skip this when ``state`` is CLOSED.)"""
        if self.state == CLOSED:
            return True
        now = time.monotonic()
        if self.state == OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
            self.probe_at = now
            return True
        # HALF_OPEN: one probe at a time, unless the probe went silent for a whole cool-down.
        if now - self.probe_at >= self.cooldown:
            self.probe_at = now
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through."""
        if self.state == CLOSED:
            return 0.0
        base = self.opened_at if self.state == OPEN else self.probe_at
        return max(0.0, base + self.cooldown - time.monotonic())

    def success(self) -> None:
        self.failures = 0
        self.state = CLOSED

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.state = OPEN
            self.opened_at = time.monotonic()
            self.opens += 1

    def open_error(self) -> ProviderError:
        wait = max(1, math.ceil(self.retry_after()))
        return ProviderError(
            503,
            f"provider {self.name} is failing (circuit breaker open after {self.threshold} "
            f"consecutive failures); retry in {wait} s",
            code="provider_circuit_open",
            kind="circuit_open",
            retry_after=str(wait),
        )


def backoff_delay(retry: int, base: float, cap: float) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2**retry)]."""
    return random.uniform(0.0, min(cap, base * (2**retry)))


# Failures worth another attempt (same target after a back-off, or the next target).
RETRYABLE_KINDS = frozenset({"connection", "timeout", "http_5xx", "rate_limited"})
# Failures that count against the provider's circuit breaker (provider health, not the request).
BREAKER_KINDS = frozenset({"connection", "timeout", "http_5xx", "quota"})
# Failures after which the next target is tried, but not the same one again.
FALLBACK_ONLY_KINDS = frozenset({"auth", "circuit_open", "quota"})


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: ``raise`` it (the request is at fault), try the
    ``next`` target (or raise when there is none), or ``retry`` the same one after ``delay``."""

    action: str  # "raise" | "next" | "retry"
    delay: float = 0.0


def decide(
    kind: str,
    *,
    retries: int,
    max_retries: int,
    has_next: bool,
    retry_after: str | None,
    now: float,
    deadline: float,
    backoff_base: float,
    backoff_max: float,
    retry_after_max: float,
    jitter: float,
) -> Decision:
    """The retry/fallback decision, a pure function of the failure and the request's budget.

    ``jitter`` in [0, 1] scales the exponential back-off (full jitter; the router passes a
    random number, tests a fixed one).
    """
    if kind not in RETRYABLE_KINDS and kind not in FALLBACK_ONLY_KINDS:
        return Decision("raise")
    if kind in FALLBACK_ONLY_KINDS or retries >= max_retries:
        return Decision("next")
    if kind == "rate_limited" and has_next:
        return Decision("next")  # another provider can answer now; do not wait for this one
    delay = jitter * min(backoff_max, backoff_base * (2**retries))
    asked = parse_retry_after(retry_after)
    if asked is not None:
        if asked > retry_after_max:
            return Decision("next")
        delay = max(delay, asked)
    if now + delay >= deadline:
        return Decision("next")
    return Decision("retry", delay)


def breaker_verdict(kind: str, *, before_first_byte: bool = True) -> str:
    """How a failure of this kind counts for the provider's breaker: ``failure`` (the provider
    is unhealthy), ``none`` (429: busy, not down; or a timeout that says nothing about health)
    or ``success`` (it answered: it is up).

    A timeout (the read timeout or the request deadline) counts only while the provider has not
    sent its first byte (``before_first_byte``): a stream's response head comes at once from a
    healthy provider, so a slow one is a slow provider. A non-streamed answer's head comes with
    the whole answer, so there the wait measures the request's own generation, not the provider:
    the router passes ``before_first_byte=False`` and such a timeout counts for nothing.
    """
    if kind == "timeout" and not before_first_byte:
        return "none"
    if kind in BREAKER_KINDS:
        return "failure"
    if kind == "rate_limited":
        return "none"
    return "success"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


class RateLimiter:
    """Requests per minute per API key: a token bucket per key, in this process's memory.

    The bucket holds up to ``rpm`` requests and refills at ``rpm / 60`` per second, so a key may
    burst its whole minute at once and then continues at the steady rate. With several worker
    processes or instances, each keeps its own buckets: the effective limit is multiplied by their
    number.

    Args:
        default_rpm: limit for keys without their own (``RATE_LIMIT_RPM``); 0 = no limit.
    """

    def __init__(self, default_rpm: int) -> None:
        self.default_rpm = default_rpm
        self._buckets: dict[int, list[float]] = {}  # key id -> [tokens, last refill, rpm]
        self.limited = 0

    def check(self, key: KeyInfo) -> None:
        """Take one request from the key's bucket.

        Raises:
            ApiError: 429 with ``Retry-After`` when the bucket is empty.
        """
        rpm = key.rpm if key.rpm is not None else self.default_rpm
        if not rpm:
            return
        now = time.monotonic()
        bucket = self._buckets.get(key.id)
        if bucket is None or bucket[2] != rpm:
            bucket = self._buckets[key.id] = [float(rpm), now, float(rpm)]
        else:
            bucket[0] = min(float(rpm), bucket[0] + (now - bucket[1]) * rpm / 60.0)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return
        self.limited += 1
        wait = max(1, math.ceil((1.0 - bucket[0]) * 60.0 / rpm))
        raise ApiError(
            429,
            f"Rate limit reached for this API key: {rpm} requests per minute; retry in {wait} s",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            kind="rate_limited",
            retry_after=str(wait),
        )


class ResilienceCounters:
    """Plain counters bumped on failure paths only; exported by :class:`ResilienceCollector`."""

    def __init__(self) -> None:
        self.retries: dict[str, int] = {}
        self.fallbacks: dict[str, int] = {}

    def retry(self, provider: str) -> None:
        self.retries[provider] = self.retries.get(provider, 0) + 1

    def fallback(self, provider: str) -> None:
        self.fallbacks[provider] = self.fallbacks.get(provider, 0) + 1


class ResilienceCollector(Collector):
    """Reads breaker states and counters at scrape time (nothing on the request path)."""

    def __init__(
        self,
        breakers: Iterable[CircuitBreaker],
        counters: ResilienceCounters,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._breakers = list(breakers)
        self._counters = counters
        self._limiter = limiter

    def set_limiter(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def add_breaker(self, breaker: CircuitBreaker) -> None:
        """Scrape ``breaker`` from now on (a provider added while running)."""
        self._breakers.append(breaker)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "mlserver_circuit_state",
            "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )
        opened = CounterMetricFamily(
            "mlserver_circuit_opened",
            "Times the provider's circuit breaker opened",
            labels=["provider"],
        )
        for b in self._breakers:
            current = b.state
            if current == OPEN and b.retry_after() == 0.0:
                current = HALF_OPEN  # the next call will probe
            state.add_metric([b.name], current)
            opened.add_metric([b.name], b.opens)
        yield state
        yield opened
        retries = CounterMetricFamily(
            "mlserver_provider_retries", "Retried provider calls", labels=["provider"]
        )
        for name, n in sorted(self._counters.retries.items()):
            retries.add_metric([name], n)
        yield retries
        fallbacks = CounterMetricFamily(
            "mlserver_provider_fallbacks",
            "Requests moved on to the next target after this provider failed",
            labels=["provider"],
        )
        for name, n in sorted(self._counters.fallbacks.items()):
            fallbacks.add_metric([name], n)
        yield fallbacks
        limited = CounterMetricFamily(
            "mlserver_rate_limited_requests", "Requests refused by the per-key rate limit"
        )
        limited.add_metric([], self._limiter.limited if self._limiter is not None else 0)
        yield limited


class FairShare:
    """A provider's concurrency slots, shared fairly between keys.

    Up to ``capacity`` calls run at once. While nobody waits a call takes a free slot at once
    (one dict update). When all slots are taken, calls wait; a freed slot goes to the waiting key
    that holds the fewest slots (oldest first among equals), so a key that fills the provider
    with slow requests keeps what it holds but gets no new slot while another key waits: every
    waiting key converges to at least ``capacity / keys`` slots. ``capacity`` 0 = no limit.

    Args:
        name: the provider's name (messages, metrics).
        capacity: PROVIDER_MAX_CONCURRENCY.
    """

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.in_use = 0
        self.held: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self.waited = 0  # calls that had to wait (a metric)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _take(self, key: Hashable) -> None:
        self.in_use += 1
        self.held[key] = self.held.get(key, 0) + 1

    async def acquire(self, key: Hashable) -> None:
        if not self.capacity:
            return
        if self.in_use < self.capacity and not self._waiting:
            self._take(key)
            return
        self.waited += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(fut)
        self._grant()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(key)  # granted, but the caller left: give the slot on
            else:
                queue = self._waiting.get(key)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(fut)
                    if not queue:
                        del self._waiting[key]
            raise

    def release(self, key: Hashable) -> None:
        if not self.capacity:
            return
        self.in_use -= 1
        n = self.held.get(key, 0) - 1
        if n > 0:
            self.held[key] = n
        else:
            self.held.pop(key, None)
        if self._waiting:
            self._grant()

    def _grant(self) -> None:
        while self.in_use < self.capacity and self._waiting:
            # dicts keep insertion order: among equals the key that started waiting first.
            key = min(self._waiting, key=lambda k: self.held.get(k, 0))
            queue = self._waiting[key]
            fut = queue.popleft()
            if not queue:
                del self._waiting[key]
            if fut.done():  # cancelled meanwhile
                continue
            self._take(key)
            fut.set_result(None)


class DeadlineWatch:
    """Cancels requests that pass their deadline: one periodic task for all of them.

    A timer per request (``asyncio.timeout``) costs about 12 µs on uvloop; registering in a dict
    costs well under 1 µs. The price is precision: a deadline fires up to ``tick`` seconds late.

    Args:
        tick: seconds between checks.
    """

    def __init__(self, tick: float = 0.1) -> None:
        self.tick = tick
        self.inflight: dict[asyncio.Task[Any], float] = {}  # task -> monotonic deadline
        self._expired: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="deadline-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def claim(self, task: asyncio.Task[Any]) -> bool:
        """Whether a CancelledError in ``task`` came from this watch (and absorb it if so)."""
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    def forget(self, task: asyncio.Task[Any]) -> None:
        self.inflight.pop(task, None)
        self._expired.discard(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if not self.inflight:
                continue
            now = time.monotonic()
            for task, deadline in list(self.inflight.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
