"""The commands as operators and the release engine run them: real processes, real servers.

Sentry and the OTLP collector cannot run here; a local HTTP receiver stands in for both, so
the real SDKs speak real HTTP to it.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from rollout.local.processes import free_port
from tests.app.conftest import ADMIN, bearer, migrate, run_cli, sql_one, token, wait_for


def get(
    url: str,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Receiver:
    """Records every POST: a stand-in for Sentry's ingest and an OTLP/HTTP collector."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver.requests.append((self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path_part: str) -> list[bytes]:
        return [b for p, b in list(self.requests) if path_part in p]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_serve_runs_the_service_the_way_the_release_engine_does(serve_app, portal_dsn, redis_url):
    app = serve_app(
        {
            "PORTAL_DATABASE_URL": portal_dsn,
            "PORTAL_REDIS_URL": redis_url,
            "PORTAL_VERSION": "9.9.9",
            "PORTAL_TRACK": "canary",
        }
    )
    status, headers, body = get(f"{app.url}/api/users/4/dashboard", headers=bearer(token(4)))
    assert status == 200 and json.loads(body)["user"]["id"] == 4
    assert headers["x-query-count"] == "1" and "x-response-time-ms" in headers
    status, _, body = get(f"{app.url}/api/health/advanced", headers=ADMIN)
    health = json.loads(body)
    assert status == 200 and health["status"] == "healthy"
    assert health["checks"]["cache"]["backend"] == "redis"
    _, _, metrics = get(f"{app.url}/metrics", headers=ADMIN)
    assert (
        'http_requests_total{method="GET",route="/api/users/{user_id}/dashboard",'
        'status="200",track="canary",version="9.9.9"} 1.0'
    ) in metrics.decode()
    started = time.monotonic()
    # uvicorn shuts down gracefully, then re-raises SIGTERM: the status is the signal's.
    assert app.stop() in (0, -15), app.log_text()
    assert time.monotonic() - started < 10
    log = app.log_text()
    assert "Application shutdown complete" in log
    assert "portal 9.9.9 (canary track) started" in log
    assert "Traceback" not in log


def test_serve_starts_while_postgres_is_down_and_reports_unhealthy(serve_app):
    port = free_port()
    app = serve_app({"PORTAL_DATABASE_URL": f"postgresql://portal@127.0.0.1:{port}/portal"})
    status, _, body = get(f"{app.url}/api/health/advanced")
    assert status == 503 and json.loads(body) == {"status": "unhealthy"}, "no error text in public"
    status, _, body = get(f"{app.url}/api/health/advanced", headers=ADMIN)
    assert status == 503 and "refused" in json.loads(body)["checks"]["database"]["error"]
    status, headers, body = get(f"{app.url}/api/users", headers=ADMIN)
    answer = json.loads(body)
    assert status == 503 and answer["error"] == "database unavailable"
    assert "refused" not in body.decode() and str(port) not in body.decode(), "details: log only"
    assert answer["requestId"] == headers["x-request-id"]
    assert f"[request {answer['requestId']}]" in app.log_text(), "the log line carries the id"


def test_sentry_gets_errors_only_while_switched_on(serve_app, portal_dsn, receiver):
    app = serve_app(
        {
            "PORTAL_DATABASE_URL": portal_dsn,
            "SENTRY_DSN": f"http://publickey@127.0.0.1:{receiver.port}/1",
            "PORTAL_FAULT_ERROR_RATE": "1",
        }
    )
    auth = ADMIN

    def events() -> int:
        return sum(b"FaultInjected" in b for b in receiver.bodies("/api/1/envelope/"))

    assert get(f"{app.url}/api/plans", headers=auth)[0] == 500
    wait_for(lambda: events() == 1, 10, "Sentry received the injected error")

    status, _, body = get(f"{app.url}/api/admin/sentry", "POST", {"enabled": False}, auth)
    assert status == 200 and json.loads(body) == {"configured": True, "enabled": False}
    for _ in range(3):
        assert get(f"{app.url}/api/plans", headers=auth)[0] == 500
    status, _, body = get(f"{app.url}/api/admin/sentry", "POST", {"enabled": True}, auth)
    assert json.loads(body)["enabled"] is True
    assert get(f"{app.url}/api/users", headers=auth)[0] == 500
    # Events leave in order: had the three been sent, they would be here before this one.
    wait_for(lambda: events() == 2, 10, "Sentry received the error made after switching on")
    assert b"/api/users" in receiver.bodies("/api/1/envelope/")[-1]
    time.sleep(0.3)
    assert events() == 2


def test_traces_are_exported_over_otlp_when_an_endpoint_is_set(serve_app, portal_dsn, receiver):
    app = serve_app(
        {
            "PORTAL_DATABASE_URL": portal_dsn,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": "portal-under-test",
        }
    )
    assert get(f"{app.url}/api/users/2/dashboard", headers=ADMIN)[0] == 200
    assert app.stop() in (0, -15)  # shutting down flushes the batch of spans
    exported = receiver.bodies("/v1/traces")
    assert exported, "no OTLP export reached the collector"
    payload = b"".join(exported)
    assert b"portal-under-test" in payload
    assert b"GET /api/users/{user_id}/dashboard" in payload


def test_spans_leave_in_batches_no_larger_than_the_setting(serve_app, portal_dsn, receiver):
    app = serve_app(
        {
            "PORTAL_DATABASE_URL": portal_dsn,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
        }
    )
    for user in (3, 4, 5):
        assert get(f"{app.url}/api/users/{user}/dashboard", headers=ADMIN)[0] == 200
    assert app.stop() in (0, -15)
    assert "in batches of up to 2 every 200 ms" in app.log_text()
    sizes = []
    for body in receiver.bodies("/v1/traces"):
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        sizes.append(sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans))
    servers = b"".join(receiver.bodies("/v1/traces")).count(b"GET /api/users/{user_id}/dashboard")
    assert servers == 3, "every request's server span was exported"
    assert sum(sizes) >= 6 and max(sizes) <= 2, sizes


def test_seed_fills_ten_thousand_users_well_under_a_minute_and_tops_up(pg_dsn):
    migrate(pg_dsn)
    env = {"PORTAL_DATABASE_URL": pg_dsn}
    started = time.monotonic()
    result = run_cli("seed", "--users", "10000", "--seed", "42", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30, f"seeding 10,000 users took {elapsed:.1f}s"
    assert "seeding 10000 users (seed 42)" in result.stdout
    assert "users: 10000 rows" in result.stdout
    assert sql_one(pg_dsn, "SELECT count(*) FROM users") == 10_000
    statuses = sql_one(pg_dsn, "SELECT array_agg(DISTINCT status) FROM subscriptions")
    assert {"active", "past_due", "canceled", "trialing", "expired"} <= set(statuses)
    assert sql_one(pg_dsn, "SELECT count(*) FROM api_tokens WHERE expires_at < now()") > 0
    for table in ("profiles", "activity_log", "rate_limits"):
        assert sql_one(pg_dsn, f"SELECT count(*) FROM {table}") > 5000, table

    again = run_cli("seed", "--users", "10000", env=env)
    assert again.returncode == 0
    assert "already has 10000 users" in again.stdout and "nothing to do" in again.stdout
    more = run_cli("seed", "--users", "10050", env=env)
    assert "has 10000 users; adding 50 to reach 10050" in more.stdout
    assert sql_one(pg_dsn, "SELECT count(*) FROM users") == 10_050
    assert sql_one(pg_dsn, "SELECT count(DISTINCT email) FROM users") == 10_050


def test_seed_before_migrate_says_what_to_do(pg_dsn):
    result = run_cli("seed", "--users", "10", env={"PORTAL_DATABASE_URL": pg_dsn})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "the portal schema is missing; run `python -m app migrate` first"
    )


def test_analyze_prints_a_readable_report_and_json(portal_dsn):
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        for uid in range(1, 30):
            conn.execute("SELECT * FROM api_tokens WHERE user_id = %s", (uid,))
        conn.execute("SELECT count(*) FROM activity_log WHERE action = 'auth.login'")
    env = {"PORTAL_DATABASE_URL": portal_dsn}
    text = run_cli("analyze", env=env)
    assert text.returncode == 0, text.stderr
    for section in (
        "== Slowest statements",
        "== Index usage",
        "== Unused indexes",
        "== INVALID indexes",
        "== Sequential scans",
        "== Buffer cache hit ratio",
        "== Recommendations",
    ):
        assert section in text.stdout, section
    assert "idx_api_tokens_user_expires" in text.stdout
    assert "SELECT * FROM api_tokens WHERE user_id = $1" in text.stdout

    result = run_cli("analyze", "--json", env=env)
    report = json.loads(result.stdout)
    assert report["slowestStatements"]["available"] is True
    assert set(report) >= {
        "slowestStatements",
        "indexUsage",
        "unusedIndexes",
        "invalidIndexes",
        "sequentialScans",
        "cacheHitRatio",
        "recommendations",
    }
    scans = {t["table"]: t for t in report["sequentialScans"]}
    assert scans["activity_log"]["seqScans"] >= 1
    assert 0 < report["cacheHitRatio"]["tables"] <= 1
