"""The migration runner: ordered SQL files in ``app/migrations/``, each marked expand or contract.

``python -m app migrate`` is the entrypoint of the Kubernetes migration Job and of the local
release target. It

- takes a Postgres advisory lock, so runners started together apply each migration once (a
  waiting runner polls ``pg_try_advisory_lock`` rather than blocking in a statement, because a
  blocked statement holds a snapshot that ``CREATE INDEX CONCURRENTLY`` would wait for);
- records every applied migration (id, phase, checksum, time) in ``portal_schema_migrations``,
  so a second run applies nothing;
- runs a transactional migration in one transaction with its record, and a ``-- transaction:
  none`` one (concurrent index builds) statement by statement, recording it at the end; its
  statements are idempotent so an interrupted run is simply run again;
- drops and rebuilds any INVALID index named by a migration (what an interrupted or failed
  ``CREATE INDEX CONCURRENTLY`` leaves behind, and what ``IF NOT EXISTS`` would silently keep).

File header lines: ``-- phase: expand|contract`` (required), ``-- transaction: none``
(optional), ``-- summary: ...`` (optional).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

Phase = Literal["expand", "contract"]
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TABLE = "portal_schema_migrations"
LOCK_KEY = 0x706F7274616C  # "portal": one lock per database for every runner of this service
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_HEADER = re.compile(r"^--\s*(phase|transaction|summary)\s*:\s*(.*?)\s*$")
_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z_][\w$]*)",
    re.IGNORECASE,
)


class MigrationError(RuntimeError):
    """The run failed; the message is one line saying which migration and why."""

    report: Report | None = None
    """What the run did before it failed (set by ``Runner.run``)."""


@dataclass(frozen=True)
class Migration:
    id: str
    phase: Phase
    transactional: bool
    sql: str
    summary: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        """The statements of a non-transactional migration (comments removed)."""
        text = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in text.split(";") if s.strip()]

    @property
    def indexes(self) -> dict[str, str]:
        """Index name -> the statement that builds it concurrently."""
        out: dict[str, str] = {}
        for statement in self.statements if not self.transactional else []:
            match = _INDEX.search(statement)
            if match:
                out[match.group(1)] = statement
        return out


@dataclass
class Report:
    phase: str
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "applied": self.applied,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "warnings": self.warnings,
        }


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: list[Migration] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.sql")):
        if not _FILE.match(path.name):
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        number = path.name[:4]
        if number in seen:
            raise MigrationError(f"{path}: two migrations are numbered {number}")
        seen.add(number)
        text = path.read_text()
        headers: dict[str, str] = {}
        last = ""
        for line in text.splitlines():
            if not line.startswith("--"):
                break
            match = _HEADER.match(line)
            if match:
                last = match.group(1)
                headers[last] = match.group(2)
            elif last == "summary" and line[2:].strip():
                headers[last] += " " + line[2:].strip()  # the summary goes on
            else:
                last = ""
        phase = headers.get("phase")
        if phase not in ("expand", "contract"):
            raise MigrationError(
                f"{path}: the first lines must say `-- phase: expand` or `-- phase: contract`"
            )
        transaction = headers.get("transaction", "")
        if transaction not in ("", "none"):
            raise MigrationError(f"{path}: `-- transaction:` may only be `none`")
        migrations.append(
            Migration(
                id=path.stem,
                phase="expand" if phase == "expand" else "contract",
                transactional=transaction != "none",
                sql=text,
                summary=headers.get("summary", ""),
            )
        )
    return migrations


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.message_detail:
            text += f" ({exc.diag.message_detail})"
    else:
        text = str(exc)
    return " ".join(text.split())


def connect(dsn: str, application_name: str = "portal-migrate") -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            dsn, autocommit=True, connect_timeout=5, application_name=application_name
        )
    except psycopg.Error as exc:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        raise MigrationError(
            f"cannot connect to the database at {where}: {_error_text(exc)}"
        ) from exc


class Runner:
    def __init__(
        self,
        dsn: str,
        migrations: list[Migration] | None = None,
        lock_timeout: float = 300.0,
        say: Callable[[str], None] = _say,
    ) -> None:
        self.dsn = dsn
        self.migrations = migrations if migrations is not None else load_migrations()
        self.lock_timeout = lock_timeout
        self.say = say

    # ------------------------------------------------------------------------- status

    def status(self) -> list[dict[str, Any]]:
        with connect(self.dsn) as conn:
            applied = self._applied(conn)
        return [
            {
                "id": m.id,
                "phase": m.phase,
                "applied": m.id in applied,
                "applied_at": _iso(applied[m.id]["applied_at"]) if m.id in applied else None,
                "summary": m.summary,
            }
            for m in self.migrations
        ]

    def _applied(self, conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
        if not exists or not exists[0]:
            return {}
        rows = conn.execute(
            sql.SQL("SELECT id, checksum, applied_at FROM {} ORDER BY id").format(
                sql.Identifier(TABLE)
            )
        ).fetchall()
        return {r[0]: {"checksum": r[1], "applied_at": r[2]} for r in rows}

    # ------------------------------------------------------------------------- run

    def run(self, phase: str = "expand") -> Report:
        if phase not in ("expand", "contract", "all"):
            raise MigrationError(f"unknown phase {phase!r} (expand | contract | all)")
        report = Report(phase=phase)
        try:
            with connect(self.dsn) as conn:
                self._lock(conn)
                try:
                    self._run_locked(conn, phase, report)
                finally:
                    if not conn.closed and not conn.broken:
                        with contextlib.suppress(psycopg.Error):
                            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        except MigrationError as exc:
            exc.report = report
            raise
        return report

    def _lock(self, conn: psycopg.Connection[Any]) -> None:
        deadline = time.monotonic() + self.lock_timeout
        told = False
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if row and row[0]:
                return
            if not told:
                self.say("another migration runner holds the lock; waiting for it to finish")
                told = True
            if time.monotonic() >= deadline:
                raise MigrationError(
                    f"another migration runner held the lock for more than "
                    f"{self.lock_timeout:g}s; see pg_locks (locktype advisory, objid "
                    f"{LOCK_KEY & 0xFFFFFFFF})"
                )
            time.sleep(0.2)

    def _run_locked(self, conn: psycopg.Connection[Any], phase: str, report: Report) -> None:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id text PRIMARY KEY,"
                " phase text NOT NULL CHECK (phase IN ('expand', 'contract')),"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(),"
                " duration_ms integer NOT NULL)"
            ).format(sql.Identifier(TABLE))
        )
        applied = self._applied(conn)
        known = {m.id for m in self.migrations}
        for m in self.migrations:
            if m.id in applied and applied[m.id]["checksum"] != m.checksum:
                report.warnings.append(
                    f"{m.id} changed since it was applied; the change is not re-run"
                )
        for mid in sorted(set(applied) - known):
            report.warnings.append(f"{mid} is applied but unknown to this version (newer?)")

        selected = [m for m in self.migrations if phase in ("all", m.phase)]
        pending = [m for m in selected if m.id not in applied]
        report.skipped = [m.id for m in selected if m.id in applied]
        if phase == "contract":
            for m in pending:
                missing = [
                    e.id
                    for e in self.migrations
                    if e.phase == "expand" and e.id < m.id and e.id not in applied
                ]
                if missing:
                    raise MigrationError(
                        f"{m.id} (contract) needs {', '.join(missing)} (expand) applied "
                        f"first; run `migrate --phase expand`"
                    )

        rebuild_later = self._repair_invalid_indexes(conn, applied, pending, report)
        for m in pending:
            self._apply(conn, m)
            report.applied.append(m.id)
            report.repaired.extend(name for name in m.indexes if name in rebuild_later)
        for w in report.warnings:
            self.say(f"warning: {w}")

    def _repair_invalid_indexes(
        self,
        conn: psycopg.Connection[Any],
        applied: dict[str, dict[str, Any]],
        pending: list[Migration],
        report: Report,
    ) -> set[str]:
        """Drop INVALID indexes our migrations build; rebuild those of applied migrations.

        Returns the names that a pending migration of this run will build again.
        """
        invalid = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE NOT i.indisvalid AND n.nspname = current_schema()"
                " ORDER BY c.relname"
            ).fetchall()
        ]
        owners = {name: m for m in self.migrations for name in m.indexes}
        pending_ids = {m.id for m in pending}
        later: set[str] = set()
        for name in invalid:
            owner = owners.get(name)
            if owner is None:
                report.warnings.append(
                    f"index {name} is INVALID but no migration builds it; left alone"
                )
                continue
            self.say(
                f"index {name} is INVALID (an interrupted concurrent build); "
                f"dropping it to build it again"
            )
            try:
                conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name))
                )
                if owner.id in applied:
                    started = time.monotonic()
                    conn.execute(owner.indexes[name].encode())
                    self.say(f"rebuilt index {name} in {_ms(started)} ms")
                    report.repaired.append(name)
                elif owner.id in pending_ids:
                    later.add(name)
                else:
                    report.warnings.append(
                        f"dropped INVALID index {name}; {owner.id} ({owner.phase}) builds it"
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"repairing INVALID index {name} failed: {_error_text(exc)}"
                ) from exc
        return later

    def _apply(self, conn: psycopg.Connection[Any], m: Migration) -> None:
        self.say(f"applying {m.id} ({m.phase}){': ' + m.summary if m.summary else ''}")
        started = time.monotonic()
        record = sql.SQL(
            "INSERT INTO {} (id, phase, checksum, duration_ms) VALUES (%s, %s, %s, %s)"
        ).format(sql.Identifier(TABLE))
        statement = ""
        try:
            if m.transactional:
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '10s'")
                    statement = m.sql
                    conn.execute(m.sql.encode())
                    conn.execute(record, (m.id, m.phase, m.checksum, _ms(started)))
            else:
                for statement in m.statements:
                    step = time.monotonic()
                    conn.execute(statement.encode())
                    name = _INDEX.search(statement)
                    if name:
                        self.say(f"  index {name.group(1)} ready in {_ms(step)} ms")
                conn.execute(record, (m.id, m.phase, m.checksum, _ms(started)))
        except psycopg.Error as exc:
            where = ""
            if not m.transactional:
                where = f" at `{' '.join(statement.split())[:120]}`"
            raise MigrationError(f"migration {m.id} failed{where}: {_error_text(exc)}") from exc
        self.say(f"applied {m.id} in {_ms(started)} ms")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
