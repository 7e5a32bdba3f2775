"""Least privilege in the data stores, on a real Postgres (passwords checked over TCP) and a real
Redis: the roles script as the roles Job runs it, migrations as ``portal_migrator`` (concurrent
index builds included), the service's role limited to DML, the read-only role to reading; the
Redis ACL users to their commands and keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
import redis

from app.cache import (
    ADMIN_STATS_KEY,
    ADMIN_TAG,
    PLANS_KEY,
    PLANS_TAG,
    USERS_LIST_TAG,
    Cache,
    dashboard_key,
    user_tag,
    users_list_key,
)
from app.metrics import Metrics
from app.migrate import Runner
from app.settings import Settings
from contract import access
from contract.names import PG_APP, PG_MIGRATOR, PG_READONLY, REDIS_APP_USER, REDIS_EXPORTER_USER
from rollout.local.processes import free_port
from rollout.local.servers import ExporterServer, PostgresServer, RedisServer
from tests.conftest import REPO

PASSWORDS = {PG_MIGRATOR: "migrator-pw-123", PG_APP: "app-pw-456", PG_READONLY: "readonly-pw-789"}


@pytest.fixture(scope="module")
def pg(server_root: Path):
    server = PostgresServer(
        server_root / "pg-access", free_port(), host_auth="scram-sha-256"
    ).start()
    yield server
    server.stop()


def tcp(pg: PostgresServer, db: str, role: str, password: str | None = None) -> str:
    return f"postgresql://{role}:{password or PASSWORDS[role]}@127.0.0.1:{pg.port}/{db}"


def new_db(pg: PostgresServer, name: str) -> str:
    pg.create_database(name)
    return name


def denied(dsn: str, statement: str) -> str:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as err,
    ):
        conn.execute(statement)
    return str(err.value)


def test_migrations_run_as_the_migrator_and_the_app_role_has_dml_only(pg):
    db = new_db(pg, "fresh")
    pg.create_roles(db, PASSWORDS)
    report = Runner(tcp(pg, db, PG_MIGRATOR), say=lambda m: None).run("all")
    assert "0002_performance_indexes" in report.applied  # CREATE INDEX CONCURRENTLY
    assert "0003_drop_users_username" in report.applied  # ALTER TABLE ... DROP COLUMN

    app = tcp(pg, db, PG_APP)
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, name) VALUES ('a@example.com', 'A')")
        conn.execute("UPDATE users SET name = 'B' WHERE email = 'a@example.com'")
        conn.execute("INSERT INTO activity_log (user_id, action) SELECT id, 'x' FROM users")
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
    assert "must be owner" in denied(app, "DROP TABLE activity_log")
    assert "must be owner" in denied(app, "ALTER TABLE users ADD COLUMN x int")
    assert "must be owner" in denied(app, "CREATE INDEX ON users (name)")
    assert "must be owner" in denied(app, "CREATE INDEX CONCURRENTLY ON users (name)")
    assert "permission denied" in denied(app, "CREATE TABLE x (id int)")
    assert "permission denied" in denied(app, "TRUNCATE activity_log")
    assert "permission denied" in denied(app, "CREATE TEMP TABLE t (id int)")

    readonly = tcp(pg, db, PG_READONLY)
    with psycopg.connect(readonly, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
    assert "permission denied" in denied(readonly, "UPDATE users SET name = 'C'")


def test_passwords_are_checked_and_other_roles_cannot_connect(pg):
    db = new_db(pg, "passwords")
    pg.create_roles(db, PASSWORDS)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(tcp(pg, db, PG_APP, "wrong"), connect_timeout=5).close()
    with psycopg.connect(pg.socket_dsn(db), autocommit=True) as conn:
        conn.execute("CREATE ROLE someone LOGIN PASSWORD 'someone-pw'")
    try:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(tcp(pg, db, "someone", "someone-pw"), connect_timeout=5).close()
    finally:
        with psycopg.connect(pg.socket_dsn(db), autocommit=True) as conn:
            conn.execute("DROP ROLE someone")


def test_a_database_migrated_before_the_roles_existed_is_handed_to_the_migrator(pg):
    """The superuser ran the expand migrations (as before); the roles script, run twice, gives
    everything to portal_migrator, which then runs the contract migration."""
    db = new_db(pg, "existing")
    Runner(pg.socket_dsn(db), say=lambda m: None).run("expand")
    with psycopg.connect(pg.socket_dsn(db), autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('ok', 'bad')")
        conn.execute("CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        conn.execute("CREATE VIEW active_users AS SELECT id FROM users WHERE status = 'active'")
    pg.create_roles(db, PASSWORDS)
    pg.create_roles(db, PASSWORDS)
    with psycopg.connect(pg.socket_dsn(db), autocommit=True) as conn:
        owners = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'i', 'S')"
        ).fetchall()
        others = conn.execute(
            "SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'mood'"
            " UNION ALL SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'one'"
            " UNION ALL SELECT pg_get_userbyid(nspowner) FROM pg_namespace"
            " WHERE nspname = 'public'"
        ).fetchall()
    assert owners and {o for _, o in owners if not _.startswith("pg_stat_statements")} == {
        PG_MIGRATOR
    }, owners
    assert {o for (o,) in others} == {PG_MIGRATOR}
    report = Runner(tcp(pg, db, PG_MIGRATOR), say=lambda m: None).run("contract")
    assert report.applied == ["0003_drop_users_username"]
    with psycopg.connect(tcp(pg, db, PG_APP), autocommit=True) as conn:
        conn.execute("SELECT id FROM active_users").fetchall()
        conn.execute("INSERT INTO users (email, name) VALUES ('b@example.com', 'B')")


def test_two_migrators_at_once_apply_each_migration_once(pg):
    db = new_db(pg, "concurrent")
    pg.create_roles(db, PASSWORDS)
    reports = []

    def run() -> None:
        reports.append(Runner(tcp(pg, db, PG_MIGRATOR), say=lambda m: None).run("expand"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(reports) == 2
    applied = sorted(m for r in reports for m in r.applied)
    assert applied == ["0001_schema", "0002_performance_indexes"]


def test_the_analysis_and_the_exporter_work_as_the_read_only_role(pg, server_root):
    db = new_db(pg, "analyzed")
    pg.create_roles(db, PASSWORDS)
    Runner(tcp(pg, db, PG_MIGRATOR), say=lambda m: None).run("expand")
    dsn = tcp(pg, db, PG_READONLY)
    env = {**os.environ, "PORTAL_DATABASE_URL": dsn}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "analyze", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    exporter = ExporterServer(server_root / "pg-exporter", free_port(), "postgres", dsn).start()
    try:
        import urllib.request

        body = urllib.request.urlopen(f"{exporter.url}/metrics", timeout=10).read().decode()
    finally:
        exporter.stop()
    assert "pg_up 1" in body
    assert "pg_settings_max_connections" in body
    assert 'pg_stat_activity_count{datname="analyzed"' in body


# ------------------------------------------------------------------------------------ Redis


@pytest.fixture(scope="module")
def acl_redis(server_root: Path):
    directory = server_root / "redis-acl"
    directory.mkdir()
    acl = directory / access.REDIS_ACL_FILE
    acl.write_text(access.redis_acl("app-secret-1", "exporter-secret-2"))
    server = RedisServer(directory, free_port(), acl_file=acl).start()
    yield server
    server.stop()


def test_redis_has_no_default_user(acl_redis):
    client = redis.Redis(port=acl_redis.port)
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port, username=REDIS_APP_USER, password="wrong").ping()


def test_the_app_user_runs_the_cache_and_nothing_else(acl_redis):
    url = f"redis://{REDIS_APP_USER}:app-secret-1@127.0.0.1:{acl_redis.port}/0"
    settings = Settings.from_env(
        {"PORTAL_DATABASE_URL": "postgresql://x@h/db", "PORTAL_REDIS_URL": url}
    )

    async def exercise() -> tuple[str, bytes, int]:
        cache = Cache(settings, Metrics("t", "stable"))
        calls = 0

        async def compute() -> bytes:
            nonlocal calls
            calls += 1
            return b'{"ok": true}'

        await cache.get_or_compute("user:1:dashboard", "short", compute, ["user:1"])
        value, hit = await cache.get_or_compute("user:1:dashboard", "short", compute, ["user:1"])
        await cache.invalidate(["user:1"])
        await cache.get_or_compute("users:list:1:20", "short", compute, ["users"])
        # Every key the service caches under, each with its tag token.
        for key, tag in (
            (dashboard_key(7), user_tag(7)),
            (users_list_key(2, 50), USERS_LIST_TAG),
            (PLANS_KEY, PLANS_TAG),
            (ADMIN_STATS_KEY, ADMIN_TAG),
        ):
            await cache.get_or_compute(key, "medium", compute, [tag])
            assert cache.backend == "redis", f"{key}: refused by the ACL, served from memory"
        flushed = await cache.flush("users:list:*")
        backend = cache.backend
        await cache.close()
        assert calls == 1 + 1 + 4 and hit
        return backend, value or b"", flushed

    backend, value, flushed = asyncio.run(exercise())
    assert backend == "redis" and value == b'{"ok": true}' and flushed >= 1
    app = redis.Redis.from_url(url)
    for command in (
        ("FLUSHALL",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("KEYS", "*"),
        ("SET", "other:1", "x"),
        ("GET", "session:1"),
        ("EVAL", "return 1", "0"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(*command)


def test_the_exporter_user_reads_server_metadata_and_no_data(acl_redis, server_root):
    exporter_client = redis.Redis(
        port=acl_redis.port, username=REDIS_EXPORTER_USER, password="exporter-secret-2"
    )
    assert exporter_client.ping()
    assert "maxmemory" in exporter_client.config_get("maxmemory")
    for command in (("GET", "user:1:dashboard"), ("SET", "user:1", "x"), ("FLUSHDB",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter_client.execute_command(*command)
    password_file = server_root / "redis-exporter-password.json"
    password_file.write_text(f'{{"redis://127.0.0.1:{acl_redis.port}": "exporter-secret-2"}}')
    exporter = ExporterServer(
        server_root / "redis-exporter",
        free_port(),
        "redis",
        f"redis://127.0.0.1:{acl_redis.port}",
        user=REDIS_EXPORTER_USER,
        password_file=password_file,
    ).start()
    try:
        import urllib.request

        body = urllib.request.urlopen(f"{exporter.url}/metrics", timeout=10).read().decode()
    finally:
        exporter.stop()
    assert "redis_up 1" in body
    assert "redis_memory_max_bytes" in body
    assert 'redis_exporter_last_scrape_error{err=""} 0' in body
