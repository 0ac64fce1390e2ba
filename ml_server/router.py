"""Model routing: ``provider/model`` names plus an alias table, and the one interface to providers.

The resilience work (retries, fallback lists, circuit breaker, rate limits) belongs in
``Router.chat``, ``Router.chat_stream`` and ``Router.embeddings``: the routes call only these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ml_server.config import Settings
from ml_server.metrics import Metrics
from ml_server.providers.anthropic import AnthropicProvider
from ml_server.providers.base import ChatResult, ChatStream, Provider, ProviderError
from ml_server.providers.fake import FAKE_MODELS, FakeProvider
from ml_server.providers.openai_compat import OpenAICompatProvider

# Listed by GET /v1/models for each provider that has a key. Any other model id of a configured
# provider still routes (``provider/any-model``); EXTRA_MODELS adds entries to the list.
DEFAULT_CATALOG: dict[str, tuple[str, ...]] = {
    "openai": (
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4o",
        "gpt-4o-mini",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
    ),
    "anthropic": ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"),
    "deepseek": ("deepseek-chat", "deepseek-reasoner"),
    "gemini": ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-embedding-001"),
    "xai": ("grok-4", "grok-3-mini"),
    "azure": (),
    "fake": FAKE_MODELS,
}


class ModelNotFound(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(
            404, message, type="invalid_request_error", code="model_not_found", kind="http_4xx"
        )


@dataclass(frozen=True)
class Route:
    provider: Provider
    model: str  # the provider's own id

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider object per configured credential (plus ``fake`` when enabled)."""
    t = settings.provider_timeout_seconds
    ct = settings.provider_connect_timeout_seconds
    providers: dict[str, Provider] = {}

    def bearer(name: str, key: Any, base_url: str, *, stream_usage: bool = True) -> None:
        if key is not None and key.get_secret_value():
            providers[name] = OpenAICompatProvider(
                name,
                base_url,
                {"Authorization": f"Bearer {key.get_secret_value()}"},
                timeout=t,
                connect_timeout=ct,
                stream_usage=stream_usage,
            )

    bearer("openai", settings.openai_api_key, settings.openai_base_url)
    bearer("deepseek", settings.deepseek_api_key, settings.deepseek_base_url)
    bearer("xai", settings.xai_api_key, settings.xai_base_url)
    bearer("gemini", settings.google_api_key, settings.gemini_base_url)
    cred = settings.azure_inference_credential
    if settings.azure_inference_endpoint and cred is not None and cred.get_secret_value():
        providers["azure"] = OpenAICompatProvider(
            "azure",
            settings.azure_inference_endpoint,
            {"api-key": cred.get_secret_value()},
            timeout=t,
            connect_timeout=ct,
            query=f"api-version={settings.azure_inference_api_version}",
            stream_usage=False,
        )
    key = settings.anthropic_api_key
    if key is not None and key.get_secret_value():
        providers["anthropic"] = AnthropicProvider(
            key.get_secret_value(),
            settings.anthropic_base_url,
            version=settings.anthropic_version,
            default_max_tokens=settings.anthropic_default_max_tokens,
            timeout=t,
            connect_timeout=ct,
        )
    if settings.fake_provider_enabled:
        providers["fake"] = FakeProvider()
    return providers


class Router:
    """Resolves model names and calls the provider, recording provider metrics."""

    def __init__(
        self,
        providers: dict[str, Provider],
        metrics: Metrics,
        *,
        aliases: dict[str, str] | None = None,
        extra_models: list[str] | None = None,
    ) -> None:
        self.providers = providers
        self._metrics = metrics
        self._aliases = dict(aliases or {})
        self._extra = list(extra_models or [])
        for alias, target in self._aliases.items():
            if "/" not in target:
                raise ValueError(
                    f"MODEL_ALIASES: {alias!r} -> {target!r} must point to 'provider/model'"
                )

    async def start(self) -> None:
        for p in self.providers.values():
            await p.start()

    async def close(self) -> None:
        for p in self.providers.values():
            await p.close()

    def resolve(self, name: str) -> Route:
        """Map a client's model name to a provider and the provider's model id.

        Raises:
            ModelNotFound: unknown alias, unknown or unconfigured provider.
        """
        target = self._aliases.get(name, name)
        prefix, sep, model = target.partition("/")
        if not sep or not model:
            raise ModelNotFound(
                f"The model '{name}' does not exist: use 'provider/model' "
                f"(providers: {', '.join(sorted(self.providers)) or 'none configured'}) "
                "or a configured alias"
            )
        provider = self.providers.get(prefix)
        if provider is None:
            raise ModelNotFound(
                f"The model '{name}' is not available: provider '{prefix}' is not configured "
                "on this server"
            )
        return Route(provider, model)

    def list_models(self) -> list[dict[str, Any]]:
        ids: list[str] = []
        for name in self.providers:
            ids.extend(f"{name}/{m}" for m in DEFAULT_CATALOG.get(name, ()))
        ids.extend(m for m in self._extra if m.partition("/")[0] in self.providers)
        ids.extend(a for a, t in self._aliases.items() if t.partition("/")[0] in self.providers)
        seen: dict[str, None] = dict.fromkeys(ids)
        return [
            {
                "id": i,
                "object": "model",
                "created": 0,
                "owned_by": self._aliases.get(i, i).split("/")[0],
            }
            for i in seen
        ]

    def _observe(self, route: Route, started: float, error: ProviderError | None) -> None:
        name = route.provider.name
        self._metrics.provider_latency.labels(name).observe(time.perf_counter() - started)
        status = "200" if error is None else str(error.status)
        self._metrics.provider_requests.labels(name, status).inc()
        if error is not None:
            self._metrics.provider_errors.labels(name, error.kind).inc()

    async def _call(self, route: Route, op: str, body: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            if op == "chat":
                result: Any = await route.provider.chat(route.model, body)
            elif op == "stream":
                result = await route.provider.chat_stream(route.model, body)
            else:
                result = await route.provider.embeddings(route.model, body)
        except ProviderError as exc:
            self._observe(route, started, exc)
            raise
        self._observe(route, started, None)
        return result

    async def chat(self, route: Route, body: dict[str, Any]) -> ChatResult:
        result: ChatResult = await self._call(route, "chat", body)
        return result

    async def chat_stream(self, route: Route, body: dict[str, Any]) -> ChatStream:
        result: ChatStream = await self._call(route, "stream", body)
        return result

    async def embeddings(self, route: Route, body: dict[str, Any]) -> ChatResult:
        result: ChatResult = await self._call(route, "embeddings", body)
        return result
