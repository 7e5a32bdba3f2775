"""Traces: one trace per request with the HTTP span and its Postgres and Redis children."""

from __future__ import annotations

import sys
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
    interval = sys.getswitchinterval()
    assert tracer_provider_for(settings) is None
    assert sys.getswitchinterval() == interval, "without tracing, no thread needs sharing with"
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
        assert sys.getswitchinterval() <= 0.001, (
            "the exporter's thread gives the GIL back to the event loop within a millisecond"
        )
        assert provider.resource.attributes["service.name"] == "portal-x"
        assert provider.resource.attributes["service.version"] == "3.1.4"
    finally:
        provider.shutdown()
        sys.setswitchinterval(interval)


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_at_ratio_zero_no_span_is_exported_not_even_postgres_or_redis(portal_dsn, redis_url):
    provider, exporter = in_memory()
    settings = settings_for(portal_dsn, redis_url, PORTAL_TRACE_SAMPLE_RATIO="0")
    async with running_app(settings, tracer_provider=provider) as client:
        for path in ("/api/users/3/dashboard", "/api/users/3/dashboard", "/api/users/4"):
            r = await client.get(path)
            assert r.status_code == 200
        assert r.headers["x-query-count"] == "1", "the request ran its statement, untraced"
    assert [s.name for s in exporter.get_finished_spans()] == []


async def test_a_caller_that_sampled_its_trace_is_followed_even_at_ratio_zero(
    portal_dsn, redis_url
):
    provider, exporter = in_memory()
    settings = settings_for(portal_dsn, redis_url, PORTAL_TRACE_SAMPLE_RATIO="0")
    async with running_app(settings, tracer_provider=provider) as client:
        r = await client.get(
            "/api/users/5/dashboard", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        )
        assert r.status_code == 200
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == ["GET /api/users/{user_id}/dashboard"]
    parent = server[0].parent
    assert parent is not None and parent.is_remote and parent.span_id == int(PARENT_ID, 16)
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}, "one trace, the caller's"
    assert {"MGET", "SET"} <= {s.name for s in spans}, [s.name for s in spans]
    assert len(spans) >= 4, "server, Redis MGET and SET, and the Postgres statement"


async def test_a_caller_that_did_not_sample_its_trace_is_followed_even_at_ratio_one(
    portal_dsn, redis_url
):
    provider, exporter = in_memory()
    async with running_app(settings_for(portal_dsn, redis_url), tracer_provider=provider) as c:
        r = await c.get(
            "/api/users/6/dashboard", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
        )
        assert r.status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == []


async def test_a_ratio_traces_about_that_share_of_requests(portal_dsn, redis_url):
    provider, exporter = in_memory()
    settings = settings_for(portal_dsn, redis_url, PORTAL_TRACE_SAMPLE_RATIO="0.5")
    async with running_app(settings, tracer_provider=provider) as client:
        for _ in range(200):
            assert (await client.get("/api/plans")).status_code == 200
    traced = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    # Binomial(200, 0.5): outside 50..150 with a probability below 1e-12.
    assert 50 <= len(traced) <= 150, f"{len(traced)} of 200 requests traced at ratio 0.5"


async def test_probes_and_scrapes_leave_no_span_not_even_their_redis_and_postgres_checks(
    portal_dsn, redis_url
):
    provider, exporter = in_memory()
    async with running_app(settings_for(portal_dsn, redis_url), tracer_provider=provider) as c:
        for path in ("/api/health", "/api/health/advanced", "/metrics"):
            assert (await c.get(path)).status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == []
