"""Postgres access: an async connection pool and one instrumented way to run a statement.

Every statement goes through ``Database.run``, which times it, counts it in the Prometheus
series and in the current request (``X-Query-Count``), logs it when slower than the threshold
and reports a suspected N+1 when the same statement repeats within one request. Connection
problems surface as ``DatabaseUnavailable`` (HTTP 503), never as an unhandled error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app import context
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("app.db")

Params = Sequence[Any] | Mapping[str, Any] | None
SUSPECT_WAIT_S = 1.0
"""How long a request waits for a connection while the database is known to be failing."""


@dataclass(frozen=True)
class Query:
    """A named SQL statement; ``operation`` and ``table`` label its metrics."""

    name: str
    sql: LiteralString
    operation: str
    table: str


class DatabaseUnavailable(RuntimeError):
    """Postgres cannot be reached (down, restarting, pool exhausted); answered with HTTP 503."""


class DatabaseTimeout(DatabaseUnavailable):
    """A statement ran past ``statement_timeout`` or waited past ``lock_timeout`` and Postgres
    cancelled it; the connection stays usable. Answered with HTTP 503."""


def session_options(settings: Settings) -> str:
    """The ``options`` of every connection the service opens: its statement and lock timeouts,
    set once at connect time (no statement per request)."""
    return (
        f"-c statement_timeout={settings.db_statement_timeout_ms}"
        f" -c lock_timeout={settings.db_lock_timeout_ms}"
    )


class Database:
    def __init__(
        self, settings: Settings, metrics: Metrics, tracer_provider: Any | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._tracer_provider = tracer_provider
        self._slow_s = settings.slow_query_ms / 1000
        self._check_task: asyncio.Task[None] | None = None
        self.suspect = False
        """True after a connection failure, until a statement succeeds again."""
        size = settings.db_pool_size
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
            settings.database_url,
            min_size=size,
            max_size=size,
            open=False,
            name=f"portal-{settings.track}",
            timeout=settings.db_timeout_s,
            # Give up quickly on a dead slot; the pool grows again on demand, so after a
            # Postgres restart new connections are made as soon as requests need them.
            reconnect_timeout=2.0,
            check=AsyncConnectionPool.check_connection,
            reconnect_failed=self._reconnect_failed,
            configure=self._configure if tracer_provider is not None else None,
            kwargs={
                "autocommit": True,
                "connect_timeout": 2,
                "application_name": f"portal-{settings.track}-{settings.version}"[:63],
                "options": session_options(settings),
            },
        )

    def _reconnect_failed(self, pool: object) -> None:
        self.suspect = True

    async def _configure(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor.instrument_connection(conn, tracer_provider=self._tracer_provider)

    async def open(self) -> None:
        # Do not wait: the service starts (and reports itself unhealthy) while Postgres is down.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=5.0)

    def connections_in_use(self) -> int:
        stats = self.pool.get_stats()
        return max(0, stats.get("pool_size", 0) - stats.get("pool_available", 0))

    async def run(self, query: Query, params: Params = None) -> tuple[Any, ...] | None:
        """Run ``query`` and return its first row (or None)."""
        ctx = context.current()
        # While the database is known to be failing, give up on a connection quickly.
        wait = SUSPECT_WAIT_S if self.suspect else self.settings.db_timeout_s
        try:
            async with self.pool.connection(timeout=wait) as conn:
                start = time.perf_counter()
                cur = await conn.execute(query.sql, params)
                row = await cur.fetchone() if cur.description is not None else None
                elapsed = time.perf_counter() - start
        except PoolTimeout as exc:
            self.suspect = True
            raise DatabaseUnavailable(f"no database connection within {wait:g}s") from exc
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            # statement_timeout or lock_timeout: the server is fine, this statement was not.
            log.warning(
                "statement %s cancelled by the database%s: %s",
                query.name,
                f" in {ctx.method} {ctx.path}" if ctx is not None else "",
                _first_line(exc),
            )
            raise DatabaseTimeout(f"{query.name}: {_first_line(exc)}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.suspect = True
            self._schedule_pool_check()
            raise DatabaseUnavailable(_first_line(exc)) from exc
        self.suspect = False
        self.metrics.observe_query(query.operation, query.table, elapsed)
        if ctx is not None:
            seen = ctx.ran(query.name)
            if seen >= self.settings.n_plus_one_threshold and ctx.first_report(query.name):
                log.warning(
                    "suspected N+1: statement %s ran %d times in one request (%s %s); "
                    "fetch the rows in one query instead",
                    query.name,
                    seen,
                    ctx.method,
                    ctx.path,
                )
        if elapsed >= self._slow_s:
            log.warning(
                "slow query: %s took %.0f ms (threshold %d ms)%s: %s",
                query.name,
                elapsed * 1000,
                self.settings.slow_query_ms,
                f" in {ctx.method} {ctx.path}" if ctx is not None else "",
                " ".join(query.sql.split())[:300],
            )
        return row

    async def ping(self, timeout: float) -> tuple[str, float, str | None]:
        """Health of the database within ``timeout`` seconds: (status, ms, error).

        ``SELECT 1`` on a pooled connection; when none comes within two thirds of the budget,
        a direct connection tells a down server (unhealthy, with its error) from an exhausted
        pool (degraded).
        """
        start = time.perf_counter()

        async def probe() -> str:
            try:
                async with self.pool.connection(timeout=timeout * 2 / 3) as conn:
                    await conn.execute("SELECT 1")
                return "healthy"
            except PoolTimeout:
                pass
            conn = await psycopg.AsyncConnection.connect(
                self.settings.database_url,
                autocommit=True,
                connect_timeout=2,
                options=session_options(self.settings),
            )
            try:
                await conn.execute("SELECT 1")
            finally:
                await conn.close()
            return "degraded"

        # The probe runs as its own task so a hung server cannot hold the caller past the
        # timeout (cancelling a query on a server that does not answer can itself block).
        task = asyncio.ensure_future(probe())
        done, _ = await asyncio.wait({task}, timeout=timeout)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if not done:
            task.add_done_callback(_consume)
            task.cancel()
            self.suspect = True
            return "unhealthy", elapsed_ms, f"no answer within {timeout:g}s"
        exc = task.exception()
        if exc is None:
            status = task.result()
            self.suspect = False
            if status == "degraded":
                return status, elapsed_ms, "connection pool exhausted (the server answers)"
            return status, elapsed_ms, None
        self.suspect = True
        if isinstance(exc, psycopg.Error):
            self._schedule_pool_check()
        return "unhealthy", elapsed_ms, _first_line(exc)

    def _schedule_pool_check(self) -> None:
        """Drop every broken pooled connection at once (after Postgres restarted, say)."""
        if self._check_task is not None and not self._check_task.done():
            return
        try:
            self._check_task = asyncio.get_running_loop().create_task(self._check_pool())
        except RuntimeError:
            return

    async def _check_pool(self) -> None:
        try:
            await self.pool.check()
        except Exception as exc:  # pool closing, or Postgres still down
            log.debug("pool check failed: %s", exc)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
