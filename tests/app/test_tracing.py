"""Traces: one trace per request with the HTTP span and its Postgres and Redis children."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.settings import Settings
from app.telemetry import tracer_provider_for
from tests.app.conftest import running_app, settings_for

pytestmark = pytest.mark.anyio


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_request_traces_http_postgres_and_redis_in_one_trace(portal_dsn, redis_url):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_app(settings_for(portal_dsn, redis_url), tracer_provider=provider) as client:
        r = await client.get("/api/users/7/dashboard")
        assert r.status_code == 200
        await client.get("/api/health")
        await client.get("/metrics")
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == ["GET /api/users/{user_id}/dashboard"], (
        "one server span per traced request; probes and scrapes are not traced"
    )
    trace_id = server[0].context.trace_id
    ids = {s.context.span_id for s in spans if s.context.trace_id == trace_id}

    db = [
        s
        for s in spans
        if attrs(s).get("db.system") == "postgresql"
        or attrs(s).get("db.system.name") == "postgresql"
    ]
    assert db, f"no Postgres span among {[s.name for s in spans]}"
    assert any(
        "json_build_object"
        in str(attrs(s).get("db.statement", "") or attrs(s).get("db.query.text", ""))
        for s in db
    )
    redis_spans = [
        s
        for s in spans
        if attrs(s).get("db.system") == "redis" or attrs(s).get("db.system.name") == "redis"
    ]
    assert {s.name for s in redis_spans} >= {"MGET", "SET"}, [s.name for s in redis_spans]
    for s in (*db, *redis_spans):
        assert s.context.trace_id == trace_id, f"{s.name} is outside the request's trace"
        assert s.kind == SpanKind.CLIENT and s.parent is not None and s.parent.span_id in ids


async def test_without_an_endpoint_nothing_is_traced():
    settings = Settings.from_env({"PORTAL_DATABASE_URL": "postgresql://u@127.0.0.1/x"})
    assert tracer_provider_for(settings) is None
    provider = tracer_provider_for(
        Settings.from_env(
            {
                "PORTAL_DATABASE_URL": "postgresql://u@127.0.0.1/x",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_SERVICE_NAME": "portal-x",
                "PORTAL_VERSION": "3.1.4",
            }
        )
    )
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "portal-x"
        assert provider.resource.attributes["service.version"] == "3.1.4"
    finally:
        provider.shutdown()
