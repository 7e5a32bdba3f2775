"""Health endpoints: liveness touches nothing; readiness follows Postgres and Redis."""

from __future__ import annotations

import os
import signal
import time

import anyio
import psycopg
import pytest

from app.seed import Seeder
from tests.app.conftest import migrate, quiet, running_app, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_postgres(pg_factory):
    """A private, migrated and seeded Postgres this test may stop, start or freeze."""
    server = pg_factory()
    dsn = server.create_database("portal")
    migrate(dsn)
    Seeder(dsn, say=quiet).run(30, seed=1)
    return server, dsn


async def test_postgres_stopped_health_is_503_then_recovers_after_restart(own_postgres, redis_url):
    server, dsn = own_postgres
    async with running_app(settings_for(dsn, redis_url)) as client:
        r = await client.get("/api/health/advanced")
        assert r.status_code == 200 and r.json()["status"] == "healthy"

        await anyio.to_thread.run_sync(server.stop)

        started = time.monotonic()
        r = await client.get("/api/health/advanced")
        assert time.monotonic() - started < 3, "the database check must time out fast"
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unhealthy"
        assert body["checks"]["database"]["status"] == "unhealthy"
        assert body["checks"]["database"]["error"]
        assert body["checks"]["cache"]["status"] == "healthy"
        live = await client.get("/api/health")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        down = await client.get("/api/users/12/activity")
        assert down.status_code == 503 and down.json()["error"] == "database unavailable"

        await anyio.to_thread.run_sync(server.start)

        deadline = time.monotonic() + 15
        while True:
            r = await client.get("/api/health/advanced")
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, f"no recovery after restart: {r.json()}"
            await anyio.sleep(0.1)
        assert r.json()["status"] == "healthy"
        for _ in range(15):  # more than the pool size: no stale connection is handed out
            assert (await client.get("/api/users/12/activity")).status_code == 200


async def test_postgres_hanging_health_answers_within_two_seconds(own_postgres):
    """Postgres frozen (SIGSTOP): no connection error ever comes, the check must time out."""
    server, dsn = own_postgres
    async with running_app(settings_for(dsn, PORTAL_DB_TIMEOUT_MS="1000")) as client:
        assert (await client.get("/api/health/advanced")).status_code == 200
        with psycopg.connect(server.dsn()) as conn:
            pids = [
                r[0]
                for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                )
            ]
        postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
        frozen = [postmaster, *pids]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = await client.get("/api/health/advanced")
            elapsed = time.monotonic() - started
            live = await client.get("/api/health")
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert r.status_code == 503 and r.json()["checks"]["database"]["status"] == "unhealthy"
        assert elapsed < 2.5, f"the health check took {elapsed:.1f}s against a hung Postgres"
        assert live.status_code == 200
        deadline = time.monotonic() + 15
        while (await client.get("/api/health/advanced")).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after Postgres thawed"
            await anyio.sleep(0.1)


async def test_liveness_touches_no_dependency(portal_dsn):
    settings = settings_for("postgresql://nobody@127.0.0.1:1/none")
    async with running_app(settings) as client:
        r = await client.get("/api/health")
        advanced = await client.get("/api/health/advanced")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": "1.2.3", "track": "canary"}
    assert r.headers["x-query-count"] == "0"
    assert advanced.status_code == 503


async def test_health_metrics_count_business_requests_and_errors(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        for uid in range(1, 11):
            await client.get(f"/api/users/{uid}/dashboard")
        await client.get("/api/users/99999/dashboard")  # 404: counted, not an error
        for _ in range(5):
            await client.get("/api/health")
        await client.get("/metrics")
        body = (await client.get("/api/health/advanced")).json()
    m = body["metrics"]
    assert m["requestCount"] == 11, "probes and scrapes are not counted"
    assert m["errorCount"] == 0
    assert m["avgResponseTimeMs"] > 0 and m["p95ResponseTimeMs"] >= m["avgResponseTimeMs"] / 10
    assert body["version"] == "1.2.3" and body["track"] == "canary"
    assert set(body["checks"]) == {"database", "cache", "memory"}
    assert body["checks"]["memory"]["rssBytes"] > 10_000_000
    assert 0 < body["checks"]["memory"]["percent"] < 100
    assert body["checks"]["database"]["responseTimeMs"] >= 0
