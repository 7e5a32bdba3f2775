"""Tracing (OpenTelemetry over OTLP) and error reporting (Sentry), both off unless configured.

A traced request gets a server span from FastAPI and a child span for every Postgres statement
and Redis command it runs; ``PORTAL_TRACE_SAMPLE_RATIO`` sets the share of requests traced.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import opentelemetry.context as otel_context
from fastapi.telemetry import TelemetryConfig
from opentelemetry.instrumentation.utils import suppress_instrumentation
from starlette.types import Receive, Scope, Send

from app.context import is_probe
from app.settings import Settings

log = logging.getLogger("app.telemetry")

TRACED = "portal.traced"
"""ASGI scope key, true on a request the head sampler chose to trace."""


def tracer_provider_for(settings: Settings) -> Any | None:
    """A TracerProvider exporting over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

    Its sampler keeps every span it is asked about unless the request's caller sent a
    ``traceparent`` that says not sampled: the ratio is applied before that, by ``HeadSampler``.
    """
    if not settings.otel_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": settings.otel_service_name,
                "service.version": settings.version,
                "portal.track": settings.track,
            }
        ),
        sampler=ParentBased(ALWAYS_ON),
    )
    endpoint = settings.otel_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint),
            max_export_batch_size=settings.trace_batch_size,
            schedule_delay_millis=settings.trace_batch_delay_ms,
        )
    )
    share_the_gil()
    log.info(
        "tracing: exporting spans to %s in batches of up to %d every %d ms, %g of requests traced",
        endpoint,
        settings.trace_batch_size,
        settings.trace_batch_delay_ms,
        settings.trace_sample_ratio,
    )
    return provider


EXPORT_SWITCH_INTERVAL_S = 0.001
"""How long the span exporter's thread may keep the GIL once the event loop wants it back."""


def share_the_gil() -> None:
    """Let the event loop take the GIL back from the span exporter within a millisecond.

    The exporter encodes and sends spans on its own thread. Each time the loop waits for I/O,
    that thread takes the GIL and, at Python's default switch interval (5 ms), may keep it for
    5 ms after the loop's I/O is ready: a traced request that waits three times (its request,
    Redis, its response) during an export could wait 15 ms more. That was the traced p95's
    tail; the README's benchmark table has the figures. A shorter interval already set is kept.
    """
    if sys.getswitchinterval() > EXPORT_SWITCH_INTERVAL_S:
        sys.setswitchinterval(EXPORT_SWITCH_INTERVAL_S)


class HeadSampler:
    """Decides whether a request is traced, before any tracing work is done for it.

    Probes and scrapes never are (they would drown the traces that matter). A request whose
    caller sent a W3C ``traceparent`` follows the caller's decision (the provider's parent-based
    sampler reads it). Any other request starts a trace with probability ``ratio``.

    Deciding first is what makes an untraced request cheap: FastAPI creates no server span for it
    and, under ``suppress_instrumentation``, the Redis and Postgres instrumentations step aside at
    their first line instead of building spans nobody records.
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def traced(self, scope: Scope) -> bool:
        if is_probe(scope["path"]):
            return False
        if self.ratio >= 1.0:
            return True
        for name, _ in scope["headers"]:
            if name == b"traceparent":
                return True
        return self.ratio > 0.0 and random.random() < self.ratio


with suppress_instrumentation():
    _UNTRACED = otel_context.get_current()
"""The OpenTelemetry context of an untraced request: no span, instrumentation suppressed. Made
once; attaching it costs a request less than entering ``suppress_instrumentation`` each time."""


async def sampled(
    sampler: HeadSampler,
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """``app`` (FastAPI's handling of an HTTP request), traced if ``sampler`` says so."""
    if sampler.traced(scope):
        scope[TRACED] = True
        await app(scope, receive, send)
        return
    # FastAPI skips its telemetry for a request marked so (as it does for one already observed
    # by an outer FastAPI app); without the mark, ``_untraced`` still excludes it.
    scope["fastapi.telemetry"] = None
    token = otel_context.attach(_UNTRACED)
    try:
        await app(scope, receive, send)
    finally:
        otel_context.detach(token)


def fastapi_telemetry(tracer_provider: Any | None) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry settings: with a provider, one server span per traced request
    (named after the route template, ``GET /api/users/{user_id}/dashboard``); without one,
    nothing (FastAPI would otherwise look for global providers on every request)."""
    if tracer_provider is None:
        return {"tracing": False, "metrics": False, "logs": False}
    return {
        "tracer_provider": tracer_provider,
        "tracing": True,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "exclude": _untraced,
    }


def _untraced(scope: Scope) -> bool:
    return not scope.get(TRACED, False)


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
