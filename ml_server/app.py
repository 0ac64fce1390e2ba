"""The FastAPI application: create_app() and its lifespan (engine, providers, usage writer)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ml_server import __version__
from ml_server import catalog as model_catalog
from ml_server import memory as memory_layer
from ml_server.admin import routes as admin_routes
from ml_server.api.fastpath import endpoint_app
from ml_server.api.openapi import install as install_openapi
from ml_server.api.routes import chat, embeddings, health, models
from ml_server.api.routes import links as links_route
from ml_server.api.routes import memory as memory_route
from ml_server.api.routes import messages as messages_route
from ml_server.api.routes import metrics as metrics_route
from ml_server.api.routes import responses as responses_route
from ml_server.api.routes import usage as usage_route
from ml_server.config import Settings, load_settings
from ml_server.context import context_of
from ml_server.db.engine import make_engine, make_sessionmaker
from ml_server.db.keys import KeyVerifier
from ml_server.db.migrate import upgrade_to_head_async
from ml_server.errors import ApiError, error_body, error_response
from ml_server.limits import GovernedUsageRecorder, Governor, GovernorCollector
from ml_server.metrics import Metrics
from ml_server.middleware import RequestMiddleware
from ml_server.provider_keys import ProviderKeyFiles, provider_adder
from ml_server.resilience import RateLimiter
from ml_server.router import Router, RoutingPolicy, build_providers
from ml_server.state import AppState

log = logging.getLogger("ml_server")
# After the drain: DRAIN_SECONDS (600) + this (4) stays inside Docker's stop grace (610 s).
USAGE_FLUSH_AT_EXIT_SECONDS = 4.0
# Young-generation threshold of the garbage collector once the app is up (CPython's default: 700).
GC_GEN0_THRESHOLD = 20_000
# Set by `python -m ml_server serve` (inherited by its workers): this process only serves.
SERVING_ENV = "ML_SERVER_SERVING"


def tune_gc() -> None:
    """Once started: move every object made so far (modules, the app, settings, the catalogue:
    ~100,000) out of the collector's reach, and collect the young generation less often.

    With CPython's defaults a request's short-lived objects (a few hundred) trigger a young
    collection every couple of requests; objects alive at that moment (queued usage rows,
    in-flight requests) are promoted and, in turn, trigger full collections that walk every
    object of the process: measured at concurrency 64, a third of the server's CPU per request
    (benchmarks/gateway_overhead.py; docs/ml-server.md, Performance).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _migrate_until_done(state: AppState) -> None:
    """Apply migrations, retrying while the database is unreachable (/ready says why)."""
    delay = 1.0
    while True:
        try:
            await upgrade_to_head_async(state.settings.current_sqlalchemy_url())
        except Exception as exc:
            state.migration_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log.warning(
                "migrations failed; retrying",
                extra={"fields": {"error": state.migration_error, "retry_in_s": delay}},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        state.migrated = True
        state.migration_error = None
        log.info("database migrations applied")
        return


class GatewayApp(FastAPI):
    """FastAPI, except that POST to the hot routes goes straight to the request middleware and
    the endpoint (``ml_server.api.fastpath``), past Starlette's error and exception middleware,
    routing and dependency solving (see docs/ml-server.md, Performance)."""

    fast_entry: ASGIApp | None = None
    fast_paths: frozenset[str] = frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_entry is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.fast_paths
        ):
            scope["app"] = self
            try:
                await self.fast_entry(scope, receive, send)
            finally:
                _release_governed(scope)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            _release_governed(scope)


def _release_governed(scope: Scope) -> None:
    """Give back the concurrency slot ``Governor.admit`` took (the response is done)."""
    state = scope.get("state")
    if state and "governed" in state:
        scope["app"].state.ml.governor.release(state)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Heavy clients are created in the lifespan, inside the running loop."""
    settings = settings or load_settings()
    metrics = Metrics()
    extra_catalog = settings.model_catalog_file
    catalog = model_catalog.load(Path(extra_catalog) if extra_catalog else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings.sqlalchemy_url,
            pool_size=settings.db_pool_size,
            password_file=settings.db_password_file,
        )
        sessions = make_sessionmaker(engine)
        router = Router(
            build_providers(settings, catalog),
            metrics,
            aliases=settings.model_aliases,
            extra_models=settings.extra_models,
            policy=RoutingPolicy.from_settings(settings),
            catalog=catalog,
        )
        limiter = RateLimiter(settings.rate_limit_rpm)
        router.collector.set_limiter(limiter)
        governor = Governor(
            engine,
            default_rpm=settings.rate_limit_rpm,
            sync_seconds=settings.limits_sync_seconds,
            counts=limiter,
            resolve=lambda model: router.resolve(model).label,
        )
        usage = GovernedUsageRecorder(
            sessions,
            metrics,
            queue_size=settings.usage_queue_size,
            batch_size=settings.usage_batch_size,
            flush_seconds=settings.usage_flush_seconds,
            retry_max_seconds=settings.usage_retry_max_seconds,
            spool_dir=Path(
                settings.usage_spool_dir or Path(settings.local_data_dir) / "usage-spool"
            ),
            spool_max_bytes=settings.usage_spool_max_bytes,
            stuck_seconds=settings.usage_stuck_seconds,
        )
        state = AppState(
            settings=settings,
            metrics=metrics,
            engine=engine,
            sessions=sessions,
            router=router,
            usage=usage,
            keys=KeyVerifier(sessions, settings.key_cache_seconds),
            limiter=limiter,
            governor=governor,
        )
        usage.governor = governor
        metrics.registry.register(GovernorCollector(governor))
        app.state.ml = state
        await router.start()
        key_files = ProviderKeyFiles(
            settings.secrets_dir,
            router.providers,
            settings.provider_key_reload_seconds,
            add=provider_adder(settings, catalog, router),
        )
        router.on_auth_failure = key_files.check_after_auth_failure
        key_files.start()
        usage.start()
        governor.start()
        metrics_server = None
        # With several workers the supervisor serves the port for all (ml_server/__main__.py).
        if settings.effective_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import start_http_server

            metrics_server, _ = start_http_server(
                settings.effective_metrics_port, settings.metrics_host, registry=metrics.registry
            )
        migration = asyncio.create_task(_migrate_until_done(state), name="migrations")
        if os.environ.get(SERVING_ENV) == "1":  # not in a test process building many apps
            tune_gc()
        log.info(
            "ml_server started",
            extra={
                "fields": {
                    "version": __version__,
                    "environment": settings.environment,
                    "providers": sorted(router.providers),
                    "database": engine.url.get_backend_name(),
                }
            },
        )
        try:
            yield
        finally:
            migration.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await migration
            # Requests cancelled at the end of the drain record their rows in their `finally`:
            # let them run before the queue is flushed.
            await asyncio.sleep(0.05)
            await key_files.stop()
            await governor.stop()
            await usage.stop(flush_seconds=USAGE_FLUSH_AT_EXIT_SECONDS)
            await memory_layer.close(app)
            await router.close()
            await engine.dispose()
            if metrics_server is not None:
                metrics_server.shutdown()

    app = GatewayApp(
        title="Humansa ML Server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None if not settings.is_development else "/docs",
        redoc_url=None,
        openapi_url=None if not settings.is_development else "/openapi.json",
        # FastAPI's OpenTelemetry bridge checks the global providers on every request; we export
        # Prometheus metrics ourselves.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return Response(
            error_body(
                f"{loc}: {first.get('msg', 'invalid')}",
                "invalid_request_error",
                "invalid_request",
                loc or None,
            ),
            status_code=422,
            media_type="application/json",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return Response(
            error_body(str(exc.detail), "invalid_request_error", code),
            status_code=exc.status_code,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        rid = context_of(request.scope).request_id
        log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": rid}})
        return Response(
            error_body(f"internal error (request id {rid})", "api_error", "internal_error"),
            status_code=500,
            media_type="application/json",
        )

    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_read_timeout_seconds,
    )
    fast_routes = {
        "/v1/chat/completions": endpoint_app(chat.chat_completions),
        "/v1/embeddings": endpoint_app(embeddings.embeddings),
    }
    app.fast_paths = frozenset(fast_routes)
    app.fast_entry = RequestMiddleware(
        functools.partial(FastAPI.__call__, app),  # not reached: each fast path has its endpoint
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        fast_routes=fast_routes,
        body_timeout=settings.body_read_timeout_seconds,
    )
    for module in (
        health,
        metrics_route,
        models,
        chat,
        embeddings,
        usage_route,
        messages_route,
        responses_route,
        links_route,
        memory_route,
    ):
        app.include_router(module.router)
    app.include_router(admin_routes.router)
    install_openapi(app)
    return app
