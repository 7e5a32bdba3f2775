"""The migration runner: recorded, idempotent, safe concurrently, repairs INVALID indexes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from app.migrate import MIGRATIONS_DIR, MigrationError, Runner, load_migrations
from tests.app.conftest import REPO, quiet, run_cli, sql_one, wait_for


def env_for(dsn: str) -> dict[str, str]:
    return {"PORTAL_DATABASE_URL": dsn}


def migrate_json(dsn: str, *args: str) -> dict[str, Any]:
    result = run_cli("migrate", *args, "--json", env=env_for(dsn))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def index_state(dsn: str, name: str) -> str | None:
    """'valid', 'INVALID' or None when the index does not exist."""
    valid = sql_one(
        dsn,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c"
        " ON c.oid = i.indexrelid WHERE c.relname = %s",
        (name,),
    )
    return None if valid is None else ("valid" if valid else "INVALID")


def test_every_migration_file_declares_its_phase_and_index_builds_are_concurrent():
    migrations = load_migrations()
    assert [m.id for m in migrations] == sorted(m.id for m in migrations)
    assert {m.phase for m in migrations} == {"expand", "contract"}
    indexes = next(m for m in migrations if m.id.endswith("performance_indexes"))
    assert not indexes.transactional
    assert set(indexes.indexes) >= {
        "idx_users_email",
        "idx_users_created_at",
        "idx_users_status",
        "idx_subscriptions_user_status",
        "idx_subscriptions_status",
        "idx_api_tokens_user_expires",
        "idx_activity_log_user_created",
        "idx_rate_limits_user_endpoint_window",
    }
    for statement in indexes.statements:
        assert "CONCURRENTLY" in statement, statement


def test_expand_then_contract_apply_in_order_and_status_reports_them(pg_dsn):
    status = migrate_json(pg_dsn, "--status")["migrations"]
    assert status and all(m["applied"] is False and m["applied_at"] is None for m in status)

    report = migrate_json(pg_dsn)  # default phase: expand
    assert report["phase"] == "expand"
    expand = [m.id for m in load_migrations() if m.phase == "expand"]
    contract = [m.id for m in load_migrations() if m.phase == "contract"]
    assert report["applied"] == expand and report["skipped"] == [] and report["repaired"] == []
    assert (
        sql_one(
            pg_dsn,
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'users' AND column_name = 'username'",
        )
        == 1
    )

    status = {m["id"]: m for m in migrate_json(pg_dsn, "--status")["migrations"]}
    assert all(status[i]["applied"] and status[i]["applied_at"] for i in expand)
    assert all(status[i]["phase"] == "contract" and not status[i]["applied"] for i in contract)

    report = migrate_json(pg_dsn, "--phase", "contract")
    assert report["applied"] == contract
    assert (
        sql_one(
            pg_dsn,
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'users' AND column_name = 'username'",
        )
        == 0
    )
    status = migrate_json(pg_dsn, "--status")["migrations"]
    assert all(m["applied"] for m in status)


def test_a_second_run_applies_nothing(pg_dsn):
    first = migrate_json(pg_dsn, "--phase", "all")
    assert first["applied"]
    second = migrate_json(pg_dsn, "--phase", "all")
    assert second["applied"] == [] and second["skipped"] == first["applied"]
    assert sql_one(pg_dsn, "SELECT count(*) FROM portal_schema_migrations") == len(first["applied"])


def test_a_contract_migration_is_refused_before_its_expand_migrations(pg_dsn):
    result = run_cli("migrate", "--phase", "contract", env=env_for(pg_dsn))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "run `migrate --phase expand`" in result.stderr
    assert sql_one(pg_dsn, "SELECT count(*) FROM portal_schema_migrations") == 0


def test_concurrent_runners_apply_each_migration_exactly_once(pg_dsn):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        **env_for(pg_dsn),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "migrate", "--phase", "all", "--json"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]
    applied = [mid for r in reports for mid in r["applied"]]
    all_ids = [m.id for m in load_migrations()]
    assert sorted(applied) == all_ids, f"each migration applied once, got {reports}"
    assert sql_one(pg_dsn, "SELECT count(*) FROM portal_schema_migrations") == len(all_ids)
    assert sql_one(pg_dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


def _forget_index_migration(dsn: str, index: str) -> None:
    """As if the index migration had never run to the end and this index never been built."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM portal_schema_migrations WHERE id = '0002_performance_indexes'")
        conn.execute(f"DROP INDEX {index}")


def test_an_interrupted_concurrent_index_build_is_dropped_and_rebuilt(portal_dsn):
    index = "idx_users_created_at"
    _forget_index_migration(portal_dsn, index)

    # An open writing transaction makes CREATE INDEX CONCURRENTLY wait after it has created
    # the (not yet valid) index; cancelling it then leaves an INVALID index, as a killed Job
    # or an operator's Ctrl-C would.
    blocker = psycopg.connect(portal_dsn)
    blocker.execute("UPDATE users SET name = name WHERE id = 1")
    runner = subprocess.Popen(
        [sys.executable, "-m", "app", "migrate", "--json"],
        cwd=REPO,
        env={**os.environ, "PORTAL_DATABASE_URL": portal_dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def building() -> bool:
            return bool(
                sql_one(
                    portal_dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s"
                    " AND wait_event_type = 'Lock'",
                    (f"%INDEX CONCURRENTLY IF NOT EXISTS {index}%",),
                )
            )

        wait_for(building, 30, "the concurrent index build is waiting")
        assert sql_one(
            portal_dsn,
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"%INDEX CONCURRENTLY IF NOT EXISTS {index}%",),
        )
        out, err = runner.communicate(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("migration 0002_performance_indexes failed at `CREATE INDEX")
    assert "canceling statement due to user request" in last
    failed = json.loads(out)
    assert failed["applied"] == [] and "canceling statement" in failed["error"]
    assert index_state(portal_dsn, index) == "INVALID"

    report = migrate_json(portal_dsn)
    assert report["repaired"] == [index]
    assert report["applied"] == ["0002_performance_indexes"]
    assert index_state(portal_dsn, index) == "valid"
    assert sql_one(portal_dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    # Used by the planner again.
    with psycopg.connect(portal_dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM users WHERE created_at > now() - interval '1 day'"
            )
        )
    assert index in plan


def test_a_failed_unique_index_build_names_the_duplicate_and_heals_once_fixed(portal_dsn):
    index = "idx_users_email"
    _forget_index_migration(portal_dsn, index)
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE users SET email = (SELECT email FROM users WHERE id = 1) WHERE id = 2")
    result = run_cli("migrate", env={"PORTAL_DATABASE_URL": portal_dsn})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "migration 0002_performance_indexes failed" in last
    assert 'could not create unique index "idx_users_email"' in last
    assert "is duplicated" in last
    assert index_state(portal_dsn, index) == "INVALID"

    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE users SET email = 'fixed.2@example.com' WHERE id = 2")
    report = Runner(portal_dsn, say=quiet).run("expand")
    assert report.repaired == [index] and report.applied == ["0002_performance_indexes"]
    assert index_state(portal_dsn, index) == "valid"


def test_an_invalid_index_of_an_applied_migration_is_rebuilt(portal_dsn):
    # The state a failed REINDEX CONCURRENTLY or a hand-run rebuild leaves behind: the
    # migration is recorded, its index is not valid.
    index = "idx_subscriptions_user_status"
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute(
            f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{index}'::regclass"
        )
    assert index_state(portal_dsn, index) == "INVALID"
    report = Runner(portal_dsn, say=quiet).run("expand")
    assert report.repaired == [index] and report.applied == []
    assert index_state(portal_dsn, index) == "valid"


def test_an_invalid_index_nobody_owns_is_reported_and_left_alone(portal_dsn):
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX idx_someone_elses ON users (name)")
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid ="
            " 'idx_someone_elses'::regclass"
        )
    report = Runner(portal_dsn, say=quiet).run("all")
    assert report.repaired == []
    assert any("idx_someone_elses" in w for w in report.warnings)
    assert index_state(portal_dsn, "idx_someone_elses") == "INVALID"


def test_a_runner_waits_for_the_lock_and_then_finds_nothing_to_do(pg_dsn):
    holder = psycopg.connect(pg_dsn, autocommit=True)
    from app.migrate import LOCK_KEY

    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    said: list[str] = []
    result: dict[str, Any] = {}

    def run() -> None:
        result["report"] = Runner(pg_dsn, say=said.append, lock_timeout=30).run("all")

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: any("waiting" in s for s in said), 10, "the runner says it waits")
    assert "report" not in result
    holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    holder.close()
    thread.join(30)
    assert result["report"].applied == [m.id for m in load_migrations()]


def test_a_runner_gives_up_waiting_for_the_lock_with_one_line(pg_dsn):
    from app.migrate import LOCK_KEY

    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(MigrationError, match=r"held the lock for more than 0\.5s"):
            Runner(pg_dsn, say=quiet, lock_timeout=0.5).run("all")


def test_an_unreachable_database_is_one_line_naming_where(tmp_path):
    from rollout.local.processes import free_port

    port = free_port()
    result = run_cli("migrate", env={"PORTAL_DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/x"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot connect to the database at 127.0.0.1:{port}/x" in lines[0]


def test_a_malformed_migration_file_is_refused(tmp_path):
    (tmp_path / "0001_ok.sql").write_text("-- phase: expand\nSELECT 1;\n")
    (tmp_path / "0002_bad.sql").write_text("-- no phase here\nSELECT 1;\n")
    with pytest.raises(MigrationError, match=r"0002_bad\.sql: the first lines must say"):
        load_migrations(tmp_path)
    assert MIGRATIONS_DIR.is_dir()
