"""Limits that keep one request from hurting the others: the body size (chunked too, on the real
server), Postgres's statement and lock timeouts, and a database role with nothing but DML."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator

import psycopg
import pytest

from tests.app.conftest import ADMIN, running_app, settings_for, sql_one

pytestmark = pytest.mark.anyio


def _chunks(body: bytes, size: int = 1024) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _patch_chunked(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """PATCH with ``Transfer-Encoding: chunked`` and no Content-Length, as a streaming client
    sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(
            "PATCH",
            path,
            body=_chunks(body),
            headers={**ADMIN, "Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_body_limit_holds_for_a_chunked_body_on_the_real_server(serve_app, portal_dsn):
    app = serve_app({"PORTAL_DATABASE_URL": portal_dsn})
    before = sql_one(portal_dsn, "SELECT name FROM users WHERE id = 6")
    big = json.dumps({"name": "A" + "a" * 40_000}).encode()
    status, headers, raw = _patch_chunked(app.port, "/api/users/6", big)
    assert status == 413, raw
    body = json.loads(raw)
    assert body["error"] == "request body too large" and "16384 bytes" in body["detail"]
    assert body["requestId"] == headers["x-request-id"]
    assert sql_one(portal_dsn, "SELECT name FROM users WHERE id = 6") == before
    small = json.dumps({"name": "Chunked Name"}).encode()
    status, _, raw = _patch_chunked(app.port, "/api/users/6", small)
    assert status == 200 and json.loads(raw)["name"] == "Chunked Name", raw
    assert "Traceback" not in app.log_text()


def _backends(dsn: str, app_name: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
            (app_name,),
        ).fetchall()
    return [r[0] for r in rows]


async def test_a_statement_past_the_timeout_is_cancelled_and_its_connection_serves_on(
    portal_dsn, caplog
):
    settings = settings_for(
        portal_dsn,
        PORTAL_DB_POOL_SIZE="1",
        PORTAL_DB_STATEMENT_TIMEOUT_MS="300",
        PORTAL_FAULT_DB_SLEEP_MS="5000",  # the dashboard statement sleeps 5 s
    )
    app_name = "portal-canary-1.2.3"
    with caplog.at_level(logging.WARNING, logger="app"):
        async with running_app(settings) as client:
            assert (await client.get("/api/users/2")).status_code == 200
            (backend,) = _backends(portal_dsn, app_name)
            slow = await client.get("/api/users/2/dashboard")
            assert slow.status_code == 503, slow.text
            body = slow.json()
            assert body["error"] == "database timeout"
            assert "statement" not in body["detail"] and "cancel" not in body["detail"]
            after = await client.get("/api/users/3")
            assert after.status_code == 200, "the pool's one connection is still usable"
            assert _backends(portal_dsn, app_name) == [backend], (
                "the same connection, not a new one"
            )
            health = (await client.get("/api/health/advanced")).json()
    assert health["status"] == "healthy", "a cancelled statement is not a database outage"
    logged = [m for m in caplog.messages if "cancelled by the database" in m]
    assert logged and "statement timeout" in logged[0] and "GET /api/users/2/dashboard" in logged[0]
    assert any(body["requestId"] in m for m in caplog.messages)


async def test_an_update_waiting_past_the_lock_timeout_gives_up(portal_dsn):
    settings = settings_for(portal_dsn, PORTAL_DB_LOCK_TIMEOUT_MS="200")
    logged = "SELECT count(*) FROM activity_log WHERE user_id = 5 AND action = 'user.updated'"
    before = sql_one(portal_dsn, logged)
    holder = psycopg.connect(portal_dsn)
    try:
        holder.execute("SELECT id FROM users WHERE id = 5 FOR UPDATE")
        async with running_app(settings) as client:
            blocked = await client.patch("/api/users/5", json={"name": "Locked Out"})
            assert blocked.status_code == 503 and blocked.json()["error"] == "database timeout"
            holder.rollback()
            ok = await client.patch("/api/users/5", json={"name": "Let In"})
            assert ok.status_code == 200, ok.text
    finally:
        holder.close()
    assert sql_one(portal_dsn, "SELECT name FROM users WHERE id = 5") == "Let In"
    assert sql_one(portal_dsn, logged) == before + 1, "the refused update logged nothing"


async def test_the_service_needs_nothing_but_dml_on_its_tables(dml_role, redis_url):
    with psycopg.connect(dml_role, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE INDEX idx_probe ON users (name)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE probe (id int)")
    async with running_app(settings_for(dml_role, redis_url)) as client:
        for path in (
            "/api/users/4/dashboard",
            "/api/users/4",
            "/api/users/4/activity",
            "/api/users?page=2",
            "/api/plans",
            "/api/admin/stats",
        ):
            assert (await client.get(path)).status_code == 200, path
        patched = await client.patch("/api/users/4", json={"name": "Dee Emel", "status": "active"})
        assert patched.status_code == 200, patched.text
        flushed = await client.post("/api/admin/cache/flush", json={"pattern": "*"})
        assert flushed.status_code == 200
        health = (await client.get("/api/health/advanced")).json()
    assert health["status"] == "healthy", health
    assert sql_one(dml_role, "SELECT action FROM activity_log ORDER BY id DESC LIMIT 1") == (
        "user.updated"
    ), "the update's activity row was inserted (an identity column needs no sequence grant)"
