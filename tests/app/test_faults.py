"""The drill fault switch: off by default; only business routes; errors, latency, slow SQL."""

from __future__ import annotations

import logging
import time

import pytest

from tests.app.conftest import running_app, settings_for

pytestmark = pytest.mark.anyio


async def test_faults_are_off_by_default(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        statuses = {
            (await client.get(f"/api/users/{1 + i % 50}/dashboard")).status_code for i in range(100)
        }
    assert statuses == {200}


async def test_error_rate_one_fails_business_routes_but_never_health_metrics_or_admin(portal_dsn):
    async with running_app(settings_for(portal_dsn, PORTAL_FAULT_ERROR_RATE="1")) as client:
        for path in ("/api/users/1/dashboard", "/api/users", "/api/admin/stats", "/api/plans"):
            r = await client.get(path)
            assert r.status_code == 500, path
            assert r.json()["error"] == "injected fault"
        patch = await client.patch("/api/users/1", json={"name": "Never Applied"})
        assert patch.status_code == 500
        assert (await client.get("/api/health")).status_code == 200
        assert (await client.get("/api/health/advanced")).status_code == 200
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        flush = await client.post("/api/admin/cache/flush", json={"pattern": "*"})
        assert flush.status_code == 200
        health = (await client.get("/api/health/advanced")).json()
    assert (
        'http_requests_total{method="GET",route="/api/users/{user_id}/dashboard",status="500"'
    ) in metrics.text, "injected errors are visible to the gates"
    assert health["metrics"]["errorCount"] == 5
    assert health["status"] == "healthy", "faults do not touch the health checks"


async def test_error_rate_fails_about_that_fraction(portal_dsn):
    async with running_app(settings_for(portal_dsn, PORTAL_FAULT_ERROR_RATE="0.3")) as client:
        codes = [(await client.get("/api/plans")).status_code for _ in range(300)]
    failed = codes.count(500) / len(codes)
    assert 0.18 < failed < 0.42, f"expected about 30% failures, got {failed:.0%}"
    assert set(codes) == {200, 500}


async def test_latency_fault_delays_business_routes_only_and_logs_slow_requests(portal_dsn, caplog):
    settings = settings_for(portal_dsn, PORTAL_FAULT_LATENCY_MS="300", PORTAL_SLOW_REQUEST_MS="250")
    with caplog.at_level(logging.WARNING, logger="app.http"):
        async with running_app(settings) as client:
            await client.get("/api/plans")
            started = time.monotonic()
            r = await client.get("/api/plans")
            slow = time.monotonic() - started
            started = time.monotonic()
            await client.get("/api/health/advanced")
            fast = time.monotonic() - started
    assert r.status_code == 200
    assert slow >= 0.3 and float(r.headers["x-response-time-ms"]) >= 300
    assert fast < 0.25
    slow_logs = [m for m in caplog.messages if m.startswith("slow request")]
    assert slow_logs and "GET /api/plans" in slow_logs[0] and "threshold 250 ms" in slow_logs[0]


async def test_db_sleep_makes_the_dashboard_a_logged_slow_query_every_time(portal_dsn, caplog):
    settings = settings_for(portal_dsn, PORTAL_FAULT_DB_SLEEP_MS="250")
    with caplog.at_level(logging.WARNING, logger="app.db"):
        async with running_app(settings) as client:
            first = await client.get("/api/users/9/dashboard")
            second = await client.get("/api/users/9/dashboard")
            other = await client.get("/api/users/9")
            metrics = (await client.get("/metrics")).text
    assert first.status_code == second.status_code == 200
    assert first.json()["user"]["id"] == 9
    assert second.headers["x-cache-hit"] == "false", "the drill bypasses the cache"
    assert float(second.headers["x-response-time-ms"]) >= 250
    assert float(other.headers["x-response-time-ms"]) < 250
    slow = [m for m in caplog.messages if m.startswith("slow query")]
    assert len(slow) == 2 and "threshold 200 ms" in slow[0]
    assert "user_dashboard_with_fault_sleep took 2" in slow[0]
    assert 'db_query_duration_seconds_bucket{le="0.25",operation="select"' in metrics
