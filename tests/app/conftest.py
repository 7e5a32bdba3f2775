"""Fixtures for the portal service: migrated and seeded databases, the app in process, the app
as a real `python -m app serve` process.

A seeded template database is built once per session; each test gets a fresh copy of it
(``CREATE DATABASE ... TEMPLATE``, a file copy: fast), dropped afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.auth import mint, subject_for
from app.keys import KeySet, write_key_file
from app.main import create_app
from app.migrate import Runner
from app.seed import Seeder
from app.settings import Settings
from rollout.local.processes import free_port, http_ok
from rollout.local.servers import PostgresServer

REPO = Path(__file__).resolve().parents[2]
SEED_USERS = 300

_KEYS_DIR = Path(tempfile.mkdtemp(prefix="portal-test-keys-"))
KEYS_FILE = _KEYS_DIR / "keys.json"
"""The key set every service of the tests verifies tokens with."""
KEYS = KeySet(()).with_new_key("test-1")
write_key_file(KEYS_FILE, KEYS)
atexit.register(shutil.rmtree, _KEYS_DIR, True)


def token(
    user: int | None = None,
    *,
    service: str | None = None,
    scopes: tuple[str, ...] = (),
    ttl: int = 3600,
    keys: KeySet = KEYS,
) -> str:
    """A token the test services accept: for a user, or for a service (``svc:NAME``)."""
    if user is None and service is None:
        service = "tests"
    return mint(keys, subject_for(user, service), scopes, ttl)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


ADMIN = bearer(token(service="tests-admin", scopes=("admin",), ttl=86_400))
"""Headers of an operator with the admin scope."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def quiet(_: str) -> None:
    pass


def migrate(dsn: str, phase: str = "all") -> None:
    Runner(dsn, say=quiet).run(phase)


@pytest.fixture(scope="session")
def seeded_template(pg_server: PostgresServer) -> str:
    """A migrated database seeded with SEED_USERS users; only ever used as a template."""
    name = f"portal_template_{uuid.uuid4().hex[:6]}"
    dsn = pg_server.create_database(name)
    migrate(dsn)
    Seeder(dsn, say=quiet).run(SEED_USERS, seed=7)
    return name


def clone(server: PostgresServer, template: str) -> tuple[str, str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name, server.dsn(name)


def drop(server: PostgresServer, name: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def portal_dsn(pg_server: PostgresServer, seeded_template: str) -> Iterator[str]:
    """A fresh migrated and seeded database."""
    name, dsn = clone(pg_server, seeded_template)
    yield dsn
    drop(pg_server, name)


def settings_for(dsn: str, redis_url: str | None = None, **env: str) -> Settings:
    """Settings as the service reads them from its environment."""
    values = {
        "PORTAL_DATABASE_URL": dsn,
        "PORTAL_VERSION": "1.2.3",
        "PORTAL_TRACK": "canary",
        "PORTAL_AUTH_KEYS_FILE": str(KEYS_FILE),
    }
    if redis_url:
        values["PORTAL_REDIS_URL"] = redis_url
    values.update(env)
    return Settings.from_env(values)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, *, headers: dict[str, str] | None = ADMIN, **kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process (lifespan included) and an HTTP client speaking ASGI to it,
    sending ``headers`` (an admin's token unless told otherwise) with every request."""
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://portal", timeout=30, headers=headers
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def sql_one(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not true after {timeout}s")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m app <args>`` with exactly ``env`` (plus PATH) as the PORTAL_* environment."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_", "SENTRY_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ServedApp:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@pytest.fixture
def serve_app(tmp_path: Path) -> Iterator[Callable[..., ServedApp]]:
    """Start `python -m app serve` on a free port with the given environment."""
    started: list[ServedApp] = []

    def start(env: dict[str, str]) -> ServedApp:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_", "SENTRY_"))
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env={**base, "PORTAL_AUTH_KEYS_FILE": str(KEYS_FILE), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        served = ServedApp(proc, port, log)
        started.append(served)
        deadline = time.monotonic() + 20
        while not http_ok(f"{served.url}/api/health", timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start:\n{served.log_text()}")
            time.sleep(0.05)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture
def dml_role(pg_server: PostgresServer, portal_dsn: str) -> Iterator[str]:
    """A login role with USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on its tables:
    nothing else (no DDL, no sequence grant). Its DSN."""
    role = f"portal_dml_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
    yield portal_dsn.replace("postgresql://postgres@", f"postgresql://{role}@")
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")
