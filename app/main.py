"""The application factory. ``create_app(settings)`` builds one independent app (its own metrics
registry, pool and cache), so tests can run several in one process; ``app.main:app`` is the
app built from the environment, created on first access (what uvicorn imports).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import errors, openapi, telemetry
from app.api import add_routes
from app.auth import RELOAD_S, Authenticator
from app.cache import Cache
from app.db import Database
from app.gate import GuardedRoute
from app.health import RequestStats
from app.metrics import Metrics
from app.runtime import Runtime
from app.serving import RequestObserver, ServiceApp
from app.settings import Settings

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, *, tracer_provider: Any | None = None) -> FastAPI:
    """Build the service. ``tracer_provider`` overrides the OTLP one (tests pass an in-memory
    exporter's provider); without either, nothing is traced."""
    settings = settings or Settings.from_env(os.environ)
    own_provider = tracer_provider is None
    provider = tracer_provider or telemetry.tracer_provider_for(settings)
    metrics = Metrics(settings.version, settings.track, enabled=settings.instrumentation)
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        db=Database(settings, metrics, provider),
        cache=Cache(settings, metrics, provider),
        stats=RequestStats(),
        sentry=telemetry.SentrySwitch(settings),
        tracer_provider=provider,
        auth=authenticator(settings),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.db.open()
        log.info(
            "portal %s (%s track) started; cache: %s; pool size %d",
            settings.version,
            settings.track,
            "Redis" if settings.redis_url else "memory only",
            settings.db_pool_size,
        )
        if settings.faults.active:
            log.warning("FAULT SWITCH ON (drills only): %s", settings.faults.describe())
        if not settings.auth_enabled:
            log.warning("PORTAL_AUTH=off (benchmarks only): every caller is treated as an admin")
        watcher = asyncio.create_task(_watch_keys(runtime.auth))
        try:
            yield
        finally:
            watcher.cancel()
            await runtime.cache.close()
            await runtime.db.close()
            if own_provider and provider is not None:
                provider.shutdown()

    app = ServiceApp(
        title="portal",
        version=settings.version,
        lifespan=lifespan,
        docs_url="/docs" if settings.api_docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        telemetry=telemetry.fastapi_telemetry(provider),
    )
    app.router.route_class = GuardedRoute
    if provider is not None:
        app.head_sampler = telemetry.HeadSampler(settings.trace_sample_ratio)
    app.state.runtime = runtime
    errors.install(app, runtime)
    add_routes(app, runtime)
    openapi.install(app)
    if settings.instrumentation:
        app.observer = RequestObserver(runtime)
    else:
        log.warning("PORTAL_INSTRUMENTATION=off: no metrics, statistics or X- headers")
    return app


def authenticator(settings: Settings) -> Authenticator:
    """The service's authenticator with its key files read; ``KeyFileError`` (one line naming
    the file) when one is missing or wrong."""
    auth = Authenticator(
        settings.auth_keys_file, settings.metrics_token_file, enabled=settings.auth_enabled
    )
    auth.load()
    return auth


async def _watch_keys(auth: Authenticator) -> None:
    """Read the key files again when they change (a rotated Secret reaches the pod so)."""
    while True:
        await asyncio.sleep(RELOAD_S)
        try:
            auth.reload_if_changed()
        except Exception:  # never let the watcher die: the keys in use stay
            log.exception("checking the auth key files failed")


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


_built: dict[str, FastAPI] = {}


def __getattr__(name: str) -> Any:
    """``app.main:app``: built from the environment on first access, not on import."""
    if name == "app":
        if "app" not in _built:
            settings = Settings.from_env(os.environ)
            configure_logging(settings.log_level)
            _built["app"] = create_app(settings)
        return _built["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
