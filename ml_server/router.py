"""Model routing: ``provider/model`` names, an alias table of fallback lists, and the one
interface to providers, with retries, a per-request deadline and a circuit breaker per provider.

The routes call only ``Router.resolve`` and then ``Router.chat``, ``Router.chat_stream`` or
``Router.embeddings``; nothing else retries (the SDKs are not used on this path). A ``Route`` is
immutable and may be shared by concurrent requests (``resolve`` caches them): the target that
answered comes back with the result (``Served``), and the one tried last with the error
(``ApiError.target``), so accounting never reads it from a shared object.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ml_server import catalog as model_catalog
from ml_server.config import Settings
from ml_server.context import RequestContext, current
from ml_server.metrics import Metrics
from ml_server.providers.anthropic import AnthropicProvider
from ml_server.providers.base import (
    ChatResult,
    ChatStream,
    Provider,
    ProviderError,
    Usage,
    has_content,
)
from ml_server.providers.fake import FAKE_MODELS, FakeProvider
from ml_server.providers.openai_compat import OpenAICompatProvider
from ml_server.resilience import (
    BREAKER_KINDS,
    CLOSED,
    STATE_NAMES,
    CircuitBreaker,
    DeadlineWatch,
    FairShare,
    ResilienceCollector,
    ResilienceCounters,
    breaker_verdict,
    decide,
)

log = logging.getLogger(__name__)

# GET /v1/models lists, for each provider that has a key, the catalogue's listed models
# (ml_server/catalog/models.yaml); any other model id of a configured provider still routes
# (``provider/any-model``); EXTRA_MODELS adds entries to the list.


# Opening events held back while waiting for the first content (then the stream is committed).
_MAX_HELD_EVENTS = 8


class ModelNotFound(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(
            404, message, type="invalid_request_error", code="model_not_found", kind="http_4xx"
        )


@dataclass(frozen=True, slots=True)
class Target:
    """One ``provider/model`` of a route, with the provider's breaker and concurrency slots.

    A route built around adapters (/v1/messages, /v1/responses) keeps the provider's breaker
    and slots (``dataclasses.replace(target, provider=adapter)``): one key cannot take all of a
    provider's concurrency through any endpoint.
    """

    provider: Provider
    model: str
    breaker: CircuitBreaker
    slots: FairShare

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


@dataclass(frozen=True, slots=True)
class Route:
    """The ordered targets (first choice, then fallbacks) for a model name. Immutable, so one
    resolved route can serve any number of concurrent requests."""

    targets: tuple[Target, ...]

    @property
    def label(self) -> str:
        """The first choice's ``provider/model`` (what a model name resolves to)."""
        return self.targets[0].label


R = TypeVar("R")


class Served(Generic[R]):
    """A router call's result and the target that produced it (after retries and fallbacks)."""

    __slots__ = ("result", "target")

    def __init__(self, result: R, target: Target) -> None:
        self.result = result
        self.target = target


@dataclass(frozen=True)
class RoutingPolicy:
    """Retry, deadline and breaker settings (see ``Settings`` for the meaning of each).

    Args:
        deadline: REQUEST_DEADLINE_SECONDS, total time across retries and fallbacks (for a
            stream: until its first event).
        max_retries: PROVIDER_MAX_RETRIES, extra attempts on the same target.
        backoff_base: RETRY_BACKOFF_BASE_SECONDS.
        backoff_max: RETRY_BACKOFF_MAX_SECONDS.
        retry_after_max: RETRY_AFTER_MAX_SECONDS, longest provider-requested wait honoured.
        breaker_threshold: BREAKER_FAILURE_THRESHOLD.
        breaker_cooldown: BREAKER_COOLDOWN_SECONDS.
    """

    deadline: float = 280.0
    max_retries: int = 2
    backoff_base: float = 0.25
    backoff_max: float = 4.0
    retry_after_max: float = 20.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    slow_first_byte: float = 30.0
    provider_concurrency: int = 256

    @classmethod
    def from_settings(cls, s: Settings) -> RoutingPolicy:
        return cls(
            deadline=s.request_deadline_seconds,
            max_retries=s.provider_max_retries,
            backoff_base=s.retry_backoff_base_seconds,
            backoff_max=s.retry_backoff_max_seconds,
            retry_after_max=s.retry_after_max_seconds,
            breaker_threshold=s.breaker_failure_threshold,
            breaker_cooldown=s.breaker_cooldown_seconds,
            slow_first_byte=s.breaker_slow_first_byte_seconds,
            provider_concurrency=s.provider_max_concurrency,
        )


def _deadline_error(target: Target, deadline: float) -> ProviderError:
    error = ProviderError(
        504,
        f"provider {target.provider.name} did not answer in time: the request deadline of "
        f"{deadline:g} s (REQUEST_DEADLINE_SECONDS) passed",
        code="deadline_exceeded",
        kind="timeout",
    )
    error.target = target
    return error


class _PrimedStream(ChatStream):
    """A stream whose first event was already received (so failures before it could be retried).

    A provider failure after the first event is reported to the breaker and re-raised; the route
    turns it into an SSE error event.
    """

    def __init__(
        self,
        inner: ChatStream,
        events: AsyncIterator[bytes],
        held: list[bytes],
        breaker: CircuitBreaker,
        release: Callable[[], None],
    ) -> None:
        self._inner = inner
        self._events = events
        self._held = held
        self._breaker = breaker
        self._release: Callable[[], None] | None = release

    @property
    def usage(self) -> Usage:
        return self._inner.usage

    @usage.setter
    def usage(self, value: Usage) -> None:
        self._inner.usage = value

    async def events(self) -> AsyncIterator[bytes]:
        if not self._held:
            return
        for event in self._held:
            yield event
        try:
            async for event in self._events:
                yield event
        except ProviderError as exc:
            if exc.kind in BREAKER_KINDS:
                self._breaker.failure()
            raise

    def _give_back(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    async def aclose(self) -> None:
        self._give_back()  # the provider's concurrency slot
        await self._inner.aclose()

    def __del__(self) -> None:  # a stream dropped without aclose() must not keep its slot
        self._give_back()


def _split(name: str) -> tuple[str, str]:
    provider, _, model = name.partition("/")
    return provider, model


def _retired(router: Router, name: str) -> bool:
    entry = router.catalog.lifecycle(*_split(name))
    return entry is not None and entry.is_retired()


def build_providers(
    settings: Settings, catalog: model_catalog.Catalog | None = None, *, only: str | None = None
) -> dict[str, Provider]:
    """One provider object per configured credential (plus ``fake`` when enabled).

    Args:
        only: build just this provider (one whose key file appeared while running,
            ml_server/provider_keys.py); empty when it is not configured.
    """
    providers: dict[str, Provider] = {}
    models = catalog or model_catalog.default()

    def wanted(name: str) -> bool:
        return only is None or only == name

    def read_timeout(name: str) -> float:
        """``PROVIDER_TIMEOUTS[name].read`` or PROVIDER_TIMEOUT_SECONDS."""
        return settings.provider_timeouts.get(name, {}).get(
            "read", settings.provider_timeout_seconds
        )

    def connect_timeout(name: str) -> float:
        """``PROVIDER_TIMEOUTS[name].connect`` or PROVIDER_CONNECT_TIMEOUT_SECONDS."""
        return settings.provider_timeouts.get(name, {}).get(
            "connect", settings.provider_connect_timeout_seconds
        )

    def bearer(name: str, key: Any, base_url: str, *, stream_usage: bool = True) -> None:
        if wanted(name) and key is not None and key.get_secret_value():
            providers[name] = OpenAICompatProvider(
                name,
                base_url,
                {"Authorization": f"Bearer {key.get_secret_value()}"},
                timeout=read_timeout(name),
                connect_timeout=connect_timeout(name),
                stream_usage=stream_usage,
            )

    bearer("openai", settings.openai_api_key, settings.openai_base_url)
    bearer("deepseek", settings.deepseek_api_key, settings.deepseek_base_url)
    bearer("xai", settings.xai_api_key, settings.xai_base_url)
    bearer("gemini", settings.google_api_key, settings.gemini_base_url)
    cred = settings.azure_inference_credential
    if (
        wanted("azure")
        and settings.azure_inference_endpoint
        and cred is not None
        and cred.get_secret_value()
    ):
        providers["azure"] = OpenAICompatProvider(
            "azure",
            settings.azure_inference_endpoint,
            # OpenAI-only parameters (e.g. stream_options, parallel_tool_calls) are dropped by
            # Azure AI Inference instead of failing the request ("extra-parameters" header).
            {"api-key": cred.get_secret_value(), "extra-parameters": "drop"},
            timeout=read_timeout("azure"),
            connect_timeout=connect_timeout("azure"),
            query=f"api-version={settings.azure_inference_api_version}",
            # Streams ask for the usage chunk like everyone else's (a model without it drops the
            # parameter, as the extra-parameters header says); the estimate covers none coming.
            stream_usage=True,
        )
    key = settings.anthropic_api_key
    if wanted("anthropic") and key is not None and key.get_secret_value():
        providers["anthropic"] = AnthropicProvider(
            key.get_secret_value(),
            settings.anthropic_base_url,
            version=settings.anthropic_version,
            default_max_tokens=settings.anthropic_default_max_tokens,
            timeout=read_timeout("anthropic"),
            connect_timeout=connect_timeout("anthropic"),
            max_output=lambda m: getattr(models.find("anthropic", m), "max_output_tokens", None),
            adaptive=lambda m: getattr(models.find("anthropic", m), "thinking", None) == "adaptive",
        )
    if wanted("fake") and settings.fake_provider_enabled:
        providers["fake"] = FakeProvider()
    return providers


class Router:
    """Resolves model names to ordered targets and calls them with retries and fallback.

    Args:
        providers: configured providers by name.
        metrics: the app's metrics (the breaker/retry collector is registered on its registry).
        aliases: ``MODEL_ALIASES``: alias -> ``provider/model`` or an ordered list of them.
        extra_models: ``EXTRA_MODELS`` listed by ``/v1/models``.
        policy: retries, deadline, breaker (defaults as documented in ``RoutingPolicy``).
    """

    def __init__(
        self,
        providers: dict[str, Provider],
        metrics: Metrics,
        *,
        aliases: dict[str, str | list[str]] | None = None,
        extra_models: list[str] | None = None,
        policy: RoutingPolicy | None = None,
        catalog: model_catalog.Catalog | None = None,
    ) -> None:
        self.providers = providers
        self.catalog = catalog or model_catalog.default()
        self._metrics = metrics
        self.policy = policy or RoutingPolicy()
        self.breakers = {name: self._new_breaker(name) for name in providers}
        self.slots = {name: FairShare(name, self.policy.provider_concurrency) for name in providers}
        self.counters = ResilienceCounters()
        # Called with a provider's name after its 401/403; True = a new key is in use, try again
        # (ml_server/provider_keys.py).
        self.on_auth_failure: Callable[[str], bool] | None = None
        self._watch = DeadlineWatch(tick=min(0.1, self.policy.deadline / 10))
        self.collector = ResilienceCollector(self.breakers.values(), self.counters)
        metrics.registry.register(self.collector)
        self._aliases: dict[str, list[str]] = {}
        for alias, value in (aliases or {}).items():
            chain = [value] if isinstance(value, str) else list(value)
            if not chain:
                raise ValueError(f"MODEL_ALIASES: {alias!r} has an empty list of targets")
            for target in chain:
                if "/" not in target:
                    raise ValueError(
                        f"MODEL_ALIASES: {alias!r} -> {target!r} must point to 'provider/model'"
                    )
            self._aliases[alias] = chain
        self._extra = list(extra_models or [])
        # Aliases with a target that has a retirement date: resolved per request (catalog.py).
        self._dated = {
            alias
            for alias, chain in self._aliases.items()
            if any(self.catalog.lifecycle(*_split(x)) for x in chain)
        }
        # Resolved routes (immutable, shared by requests): aliases up front, direct names as
        # they are first seen.
        self._resolved: dict[str, Route] = {}
        for alias, chain in self._aliases.items():
            targets = self._chain_targets(chain)
            if targets:
                self._resolved[alias] = Route(targets)
            else:
                log.warning(
                    "alias has no configured provider",
                    extra={"fields": {"alias": alias, "targets": chain}},
                )

    def _new_breaker(self, provider: str) -> CircuitBreaker:
        policy = self.policy
        return CircuitBreaker(
            provider, threshold=policy.breaker_threshold, cooldown=policy.breaker_cooldown
        )

    def _chain_targets(self, chain: list[str]) -> tuple[Target, ...]:
        """An alias's configured targets, in its order (unconfigured providers left out)."""
        return tuple(t for t in (self._target(x) for x in chain) if t is not None)

    def _target(self, name: str) -> Target | None:
        prefix, sep, model = name.partition("/")
        provider = self.providers.get(prefix)
        if not sep or not model or provider is None:
            return None
        return Target(provider, model, self.breakers[prefix], self.slots[prefix])

    async def start(self) -> None:
        for p in self.providers.values():
            await p.start()
        self._watch.start()

    async def close(self) -> None:
        await self._watch.stop()
        for p in self.providers.values():
            await p.close()
        self._metrics.registry.unregister(self.collector)

    def circuit_states(self) -> dict[str, str]:
        """Breaker state per provider, for ``/ready``'s details."""
        out = {}
        for name, b in self.breakers.items():
            state = b.state
            if state != CLOSED and b.retry_after() == 0.0:
                out[name] = "half_open"
            else:
                out[name] = STATE_NAMES[state]
        return out

    def resolve(self, name: str) -> Route:
        """Map a client's model name to its ordered targets.

        Raises:
            ModelNotFound: unknown alias, unknown or unconfigured provider.
        """
        route = self._resolved.get(name)
        if route is not None:
            return Route(self._live(name)) if name in self._dated else route
        if name in self._aliases:
            providers = sorted({t.partition("/")[0] for t in self._aliases[name]})
            raise ModelNotFound(
                f"The model '{name}' is not available: its provider(s) {', '.join(providers)} "
                "are not configured on this server"
            )
        prefix, sep, model = name.partition("/")
        if not sep or not model:
            raise ModelNotFound(
                f"The model '{name}' does not exist: use 'provider/model' "
                f"(providers: {', '.join(sorted(self.providers)) or 'none configured'}) "
                "or a configured alias"
            )
        target = self._target(name)
        if target is None:
            raise ModelNotFound(
                f"The model '{name}' is not available: provider '{prefix}' is not configured "
                "on this server"
            )
        dated = self.catalog.lifecycle(prefix, model)
        if dated is not None:  # checked on every request: the date may pass while running
            self.catalog.check_not_retired(name)
            return Route((target,))
        route = Route((target,))
        if len(self._resolved) < 10_000:
            self._resolved[name] = route
        return route

    def _live(self, alias: str) -> tuple[Target, ...]:
        """An alias's targets today: retired ones redirected to their successor (when the
        catalogue says so) or dropped; ``ModelRetired`` when none is left."""
        chain = [self.catalog.redirect(x) for x in self._aliases[alias]]
        live = [x for x in chain if not _retired(self, x)]
        if not live:
            self.catalog.check_not_retired(chain[0], via=alias)
        targets = self._chain_targets(live)
        if not targets:
            raise ModelNotFound(
                f"The model '{alias}' is not available: the providers of its current targets "
                f"({', '.join(live)}) are not configured on this server"
            )
        return targets

    def list_models(self) -> list[dict[str, Any]]:
        ids: list[str] = []
        for name in self.providers:
            listed = FAKE_MODELS if name == "fake" else self.catalog.listed(name)
            ids.extend(f"{name}/{m}" for m in listed)
        ids.extend(
            m
            for m in self._extra
            if m.partition("/")[0] in self.providers and not _retired(self, m)
        )
        ids.extend(a for a in self._aliases if a in self._resolved)
        seen: dict[str, None] = dict.fromkeys(ids)
        out = []
        for i in seen:
            chain = self._aliases.get(i)
            first: Target | None = None
            if chain and i in self._dated:
                try:
                    first = self._live(i)[0]
                except ProviderError:
                    continue  # every target retired: not offered
            elif chain:
                first = self._resolved[i].targets[0]
            owner = first.provider.name if first is not None else i.split("/")[0]
            card = self.catalog.card(f"{first.provider.name}/{first.model}" if first else i)
            out.append({"id": i, "object": "model", "created": 0, "owned_by": owner, **card})
        return out

    def _observe(self, name: str, started: float, error: ProviderError | None) -> None:
        self._metrics.provider_latency.labels(name).observe(time.perf_counter() - started)
        status = "200" if error is None else str(error.status)
        self._metrics.provider_requests.labels(name, status).inc()
        if error is not None:
            self._metrics.provider_errors.labels(name, error.kind).inc()

    @staticmethod
    async def _attempt(
        target: Target, op: str, body: dict[str, Any], key: Hashable, head: list[float]
    ) -> Any:
        """One call to ``target``, holding the provider slot the caller took for ``key`` (given
        back when the call ends; a stream's when the stream is closed). ``head`` gets the time
        a stream's response head arrived."""
        provider = target.provider
        slots = target.slots
        if op != "stream":
            try:
                if op == "chat":
                    return await provider.chat(target.model, body)
                return await provider.embeddings(target.model, body)
            finally:
                slots.release(key)
        try:
            stream = await provider.chat_stream(target.model, body)
        except BaseException:
            slots.release(key)
            raise
        head.append(time.perf_counter())
        # A stream is opened up to its first CONTENT (the role-only opening chunk is held back):
        # failures before it, in-stream errors included, can still be retried or fall back.
        events = stream.events().__aiter__()
        held: list[bytes] = []
        try:
            while True:
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
                held.append(event)
                if has_content(event) or len(held) >= _MAX_HELD_EVENTS:
                    break
        except BaseException:
            slots.release(key)
            await stream.aclose()
            raise
        return _PrimedStream(
            stream, events, held, target.breaker, functools.partial(slots.release, key)
        )

    async def _run(self, route: Route, op: str, body: dict[str, Any]) -> Served[Any]:
        deadline = time.monotonic() + self.policy.deadline
        task = asyncio.current_task()
        if task is None:  # not inside a task: no watch, deadlines checked between attempts only
            return await self._attempts(route, op, body, deadline, None)
        self._watch.inflight[task] = deadline
        try:
            return await self._attempts(route, op, body, deadline, task)
        finally:
            self._watch.forget(task)

    @staticmethod
    def _left(ctx: RequestContext | None, target: Target) -> None:
        """The client left (its call is cancelled, so nothing returns or raises to carry the
        target): the request's own context notes which target the call was on."""
        if ctx is not None:
            ctx.target = target

    async def _attempts(
        self,
        route: Route,
        op: str,
        body: dict[str, Any],
        deadline: float,
        task: asyncio.Task[Any] | None,
    ) -> Served[Any]:
        policy = self.policy
        last: ProviderError | None = None
        targets = route.targets
        ctx = current()
        key = ctx.key_id if ctx is not None else None  # the fair share is per API key
        for index, target in enumerate(targets):
            breaker = target.breaker
            name = target.provider.name
            has_next = index + 1 < len(targets)
            retries = 0
            rekeyed = False
            while True:
                if breaker.state != CLOSED and not breaker.allow():
                    if last is None or last.kind == "circuit_open":
                        last = breaker.open_error()
                        last.target = target
                    break
                if time.monotonic() >= deadline:
                    raise last or _deadline_error(target, policy.deadline)
                try:  # a slot of the provider's concurrency, shared fairly between keys
                    await target.slots.acquire(key)
                except asyncio.CancelledError:
                    if task is None or not self._watch.claim(task):
                        self._left(ctx, target)
                        raise
                    raise last or _deadline_error(target, policy.deadline) from None
                started = time.perf_counter()
                head: list[float] = []
                try:
                    result = await self._attempt(target, op, body, key, head)
                except ProviderError as exc:
                    error = exc
                    error.target = target
                except asyncio.CancelledError:
                    if task is None or not self._watch.claim(task):
                        self._left(ctx, target)
                        raise  # the client went away, or shutdown
                    error = _deadline_error(target, policy.deadline)
                    self._observe(name, started, error)
                    if op == "stream" and not head:  # no first byte: the provider is slow
                        breaker.failure()
                    raise error from None
                else:
                    if op == "stream" and head[0] - started > policy.slow_first_byte:
                        breaker.failure()  # answered, but its first byte came too late
                    elif breaker.failures or breaker.state != CLOSED:
                        breaker.success()
                    self._observe(name, started, None)
                    return Served(result, target)
                self._observe(name, started, error)
                kind = error.kind
                if (
                    kind == "auth"
                    and not rekeyed
                    and self.on_auth_failure is not None
                    and self.on_auth_failure(name)
                ):
                    rekeyed = True  # the key file changed: the same target with the new key
                    continue
                verdict = breaker_verdict(kind, before_first_byte=op == "stream" and not head)
                if verdict == "failure":
                    breaker.failure()
                elif verdict == "success":
                    breaker.success()
                decision = decide(
                    kind,
                    retries=retries,
                    max_retries=policy.max_retries,
                    has_next=has_next,
                    retry_after=error.retry_after,
                    now=time.monotonic(),
                    deadline=deadline,
                    backoff_base=policy.backoff_base,
                    backoff_max=policy.backoff_max,
                    retry_after_max=policy.retry_after_max,
                    jitter=random.random(),
                )
                if decision.action == "raise":
                    raise error  # the request itself is at fault: no retry, no fallback
                last = error
                if decision.action == "next":
                    break
                delay = decision.delay
                retries += 1
                self.counters.retry(name)
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    if task is None or not self._watch.claim(task):
                        self._left(ctx, target)
                        raise
                    raise last from None
            if has_next:
                self.counters.fallback(name)
                if last is not None and last.kind != "circuit_open":  # no log line per request
                    log.info(
                        "falling back to the next target",
                        extra={
                            "fields": {
                                "failed": f"{name}/{target.model}",
                                "error": last.kind,
                                "next": f"{targets[index + 1].provider.name}/"
                                f"{targets[index + 1].model}",
                            }
                        },
                    )
        assert last is not None  # every path out of the loop above set it
        raise last

    async def chat(self, route: Route, body: dict[str, Any]) -> Served[ChatResult]:
        """The answer and the target that gave it.

        Raises:
            ProviderError: every target failed (or the request itself is at fault); its
                ``target`` is the one tried last.
        """
        served: Served[ChatResult] = await self._run(route, "chat", body)
        return served

    async def chat_stream(self, route: Route, body: dict[str, Any]) -> Served[ChatStream]:
        """Open a stream and receive its first event, retrying and falling back until then."""
        served: Served[ChatStream] = await self._run(route, "stream", body)
        return served

    async def embeddings(self, route: Route, body: dict[str, Any]) -> Served[ChatResult]:
        served: Served[ChatResult] = await self._run(route, "embeddings", body)
        return served

    async def add_provider(self, name: str, provider: Provider) -> None:
        """Serve a provider built after start (its key file appeared, provider_keys.py): it
        gets its breaker and concurrency slots as at start, ``provider/...`` names resolve to
        it, aliases naming it are resolved again (their targets in their order), and
        ``/v1/models`` lists its models.

        Raises:
            ValueError: a provider of that name is already served.
        """
        if name in self.providers:
            raise ValueError(f"provider {name} is already configured")
        await provider.start()
        breaker = self.breakers[name] = self._new_breaker(name)
        self.slots[name] = FairShare(name, self.policy.provider_concurrency)
        self.collector.add_breaker(breaker)
        self.providers[name] = provider  # last: resolvable only once complete
        for alias, chain in self._aliases.items():
            if any(_split(target)[0] == name for target in chain):
                targets = self._chain_targets(chain)
                if targets:
                    self._resolved[alias] = Route(targets)
