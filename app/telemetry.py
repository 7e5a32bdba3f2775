"""Tracing (OpenTelemetry over OTLP) and error reporting (Sentry), both off unless configured."""

from __future__ import annotations

import logging
from typing import Any

from app.settings import Settings

log = logging.getLogger("app.telemetry")

TRACE_EXCLUDED_URLS = "/metrics,/api/health"
"""Probes and scrapes are not traced: they would drown the traces that matter."""


def tracer_provider_for(settings: Settings) -> Any | None:
    """A TracerProvider exporting over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""
    if not settings.otel_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": settings.otel_service_name,
                "service.version": settings.version,
                "portal.track": settings.track,
            }
        )
    )
    endpoint = settings.otel_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    log.info("tracing: exporting spans to %s", endpoint)
    return provider


def instrument_app(app: Any, tracer_provider: Any) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, excluded_urls=TRACE_EXCLUDED_URLS
    )


class SentrySwitch:
    """Sentry reporting, configured by ``SENTRY_DSN`` and switchable at runtime.

    Switching off does not tear the SDK down; ``before_send`` drops every event while off.
    """

    def __init__(self, settings: Settings) -> None:
        self.configured = False
        self.enabled = False
        if not settings.sentry_dsn:
            return
        import sentry_sdk

        sentry_sdk.init(
            dsn=settings.sentry_dsn,
            release=settings.version,
            before_send=self._before_send,
            send_default_pii=False,
        )
        sentry_sdk.set_tag("track", settings.track)
        self.configured = True
        self.enabled = True
        log.info("sentry: reporting errors")

    def _before_send(self, event: Any, hint: Any) -> Any:
        return event if self.enabled else None

    def set_enabled(self, enabled: bool) -> None:
        if self.configured:
            self.enabled = enabled
            log.warning("sentry: reporting switched %s at runtime", "on" if enabled else "off")

    def capture(self, exc: BaseException) -> None:
        if self.configured and self.enabled:
            import sentry_sdk

            sentry_sdk.capture_exception(exc)

    def state(self) -> dict[str, bool]:
        return {"configured": self.configured, "enabled": self.enabled}
