"""Index migrations do not block writes: the project's runner vs a plain CREATE INDEX.

A database shaped like the app's (migration 0001) is loaded with 1,000,000 activity-log rows
and 100,000 users (``generate_series``, once, as a template). Each arm gets a fresh copy of it,
a steady write load (app-like: 70% activity-log inserts, 30% user updates, due at a fixed rate,
served by a pool of worker threads, each write with a deadline) and, after a quiet baseline,
the performance indexes of migration 0002:

- runner: ``app.migrate.Runner`` (what the migration Job runs: ``CREATE INDEX CONCURRENTLY``);
- plain: the same statements without ``CONCURRENTLY``, one after the other.

A write fails when it errors (including ``statement_timeout`` at the deadline) or when it could
not start before its deadline (the caller has given up). Latency counts from the moment the
write was due, so writes held up behind a lock show up even after the lock is gone.
"""

from __future__ import annotations

import argparse
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from app.migrate import Runner, load_migrations
from bench.common import (
    Report,
    percentile,
    positive_float,
    positive_int,
    postgres,
    progress,
    server_root,
)

NAME = "migrations"
USERS = 100_000
SLOW_MS = 100.0
"""A write slower than this was held up (the baseline p99 is a few milliseconds)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("migrations")
    g.add_argument(
        "--migrations-rows",
        type=positive_int,
        default=1_000_000,
        help="activity_log rows (the big table)",
    )
    g.add_argument(
        "--migrations-rate", type=positive_float, default=200.0, help="writes per second"
    )
    g.add_argument(
        "--migrations-workers",
        type=positive_int,
        default=16,
        help="writer threads (one connection each)",
    )
    g.add_argument(
        "--migrations-deadline-ms",
        type=positive_int,
        default=1000,
        help="a write slower than this has failed (statement_timeout too)",
    )
    g.add_argument(
        "--migrations-baseline-seconds",
        type=positive_float,
        default=3.0,
        help="write load before the build starts (and after it ends)",
    )


@dataclass
class Write:
    due: float
    kind: str
    latency_ms: float = 0.0
    ok: bool = False
    error: str = ""


@dataclass
class WriteLoad:
    """Writes due at ``rate`` per second, executed by ``workers`` threads with own connections."""

    dsn: str
    rate: float
    workers: int
    deadline_ms: int
    done: list[Write] = field(default_factory=list)
    _queue: queue.Queue[Write | None] = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        conns = []
        for _ in range(self.workers):
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="bench-writer")
            conn.execute(f"SET statement_timeout = {int(self.deadline_ms)}")
            conns.append(conn)
        for i, conn in enumerate(conns):
            t = threading.Thread(target=self._work, args=(conn, random.Random(i)), daemon=True)
            t.start()
            self._threads.append(t)
        sched = threading.Thread(target=self._schedule, daemon=True)
        sched.start()
        self._threads.append(sched)

    def stop(self) -> list[Write]:
        self._stop.set()
        self._threads[-1].join()
        for _ in range(self.workers):
            self._queue.put(None)
        for t in self._threads[:-1]:
            t.join(timeout=self.deadline_ms / 1000 + 10)
        return sorted(self.done, key=lambda w: w.due)

    def _schedule(self) -> None:
        rng = random.Random(99)
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._queue.put(Write(due, "insert" if rng.random() < 0.7 else "update"))
            i += 1

    def _work(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        deadline = self.deadline_ms / 1000
        with conn:
            while True:
                w = self._queue.get()
                if w is None:
                    return
                if time.monotonic() - w.due > deadline:
                    w.error = "not started before the deadline"
                else:
                    try:
                        if w.kind == "insert":
                            conn.execute(
                                "INSERT INTO activity_log (user_id, action, details, ip_address)"
                                " VALUES (%s, 'profile.view', '{\"via\": \"bench\"}',"
                                " '10.0.0.1')",
                                (rng.randint(1, USERS),),
                            )
                        else:
                            conn.execute(
                                "UPDATE users SET status = %s, updated_at = now() WHERE id = %s",
                                (rng.choice(("active", "pending")), rng.randint(1, USERS)),
                            )
                        w.ok = True
                    except psycopg.Error as exc:
                        w.error = (exc.diag.message_primary or str(exc)).split("\n")[0]
                w.latency_ms = (time.monotonic() - w.due) * 1000
                if w.ok and w.latency_ms > self.deadline_ms:
                    w.ok = False
                    w.error = "slower than the deadline"
                with self._lock:
                    self.done.append(w)


def _load_template(dsn: str, rows: int) -> None:
    schema = [m for m in load_migrations() if m.id.startswith("0001")]
    Runner(dsn, migrations=schema, say=lambda _: None).run("expand")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (email, name, username, status, created_at, updated_at)"
            " SELECT 'member' || i || '@example.com', 'Member ' || i, 'member' || i,"
            " (ARRAY['active','active','active','pending','suspended'])[1 + i %% 5],"
            " now() - (i %% 1000) * interval '1 day', now()"
            " FROM generate_series(1, %s) AS i",
            (USERS,),
        )
        conn.execute(
            "INSERT INTO activity_log (user_id, action, details, ip_address, created_at)"
            " SELECT 1 + (i::bigint * 7919) %% %s,"
            " (ARRAY['login','logout','profile.update','token.create','plan.change'])[1 + i %% 5],"
            " jsonb_build_object('n', i), ('10.0.' || (i %% 256) || '.' || (i %% 251))::inet,"
            " now() - (i %% 100000) * interval '1 minute'"
            " FROM generate_series(1, %s) AS i",
            (USERS, rows),
        )
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def _plain_build(dsn: str) -> list[str]:
    """The 0002 statements without CONCURRENTLY, as a naive migration would run them."""
    (m,) = [m for m in load_migrations() if m.id.startswith("0002")]
    statements = [s.replace(" CONCURRENTLY", "") for s in m.statements]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s.encode())
    return list(m.indexes)


def _arm(pg_dsn: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    dsn = pg_dsn(name)
    load = WriteLoad(
        dsn, args.migrations_rate, args.migrations_workers, args.migrations_deadline_ms
    )
    load.start()
    time.sleep(args.migrations_baseline_seconds)
    started = time.monotonic()
    if name == "runner":
        report = Runner(dsn, say=lambda _: None).run("expand")
        built = report.applied
    else:
        built = _plain_build(dsn)
    ended = time.monotonic()
    time.sleep(args.migrations_baseline_seconds)
    writes = load.stop()

    def stats(ws: list[Write]) -> dict[str, Any]:
        lat = [w.latency_ms for w in ws]
        errors: dict[str, int] = {}
        for w in ws:
            if not w.ok:
                errors[w.error] = errors.get(w.error, 0) + 1
        return {
            "writes": len(ws),
            "slow": sum(w.latency_ms > SLOW_MS for w in ws),
            "failed": sum(not w.ok for w in ws),
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat, default=float("nan")),
            "errors": errors,
        }

    during = [w for w in writes if started <= w.due <= ended]
    baseline = [w for w in writes if w.due < started]
    return {
        "build_s": ended - started,
        "built": built,
        "during": stats(during),
        "baseline": stats(baseline),
        "all": stats(writes),
    }


def run(args: argparse.Namespace) -> Report:
    rows = args.migrations_rows
    report = Report(
        NAME,
        params={
            "rows": rows,
            "users": USERS,
            "rate": args.migrations_rate,
            "workers": args.migrations_workers,
            "deadline_ms": args.migrations_deadline_ms,
            "baseline_s": args.migrations_baseline_seconds,
        },
    )
    with server_root(NAME) as root, postgres(root, max_wal_size="4GB") as pg:
        progress(NAME, f"loading {rows} activity-log rows and {USERS} users (template)")
        t0 = time.monotonic()
        _load_template(pg.create_database("bench_template"), rows)
        report.data["load_s"] = time.monotonic() - t0

        def fresh(name: str) -> str:
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "bench_template"')
            return pg.dsn(name)

        arms: dict[str, dict[str, Any]] = {}
        for name in ("runner", "plain"):
            progress(NAME, f"{name}: {args.migrations_rate:g} writes/s while building indexes")
            arms[name] = _arm(fresh, name, args)
    report.data["arms"] = arms
    labels = {"runner": "runner (CREATE INDEX CONCURRENTLY)", "plain": "plain CREATE INDEX"}
    for name in ("runner", "plain"):
        a = arms[name]
        d = a["during"]
        report.figure(f"build_seconds_{name}", a["build_s"], "s", labels[name])
        report.figure(
            f"failed_writes_{name}",
            d["failed"],
            "writes",
            f"of {d['writes']} due during the build"
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in d['errors'].items())})"
                if d["errors"]
                else ""
            ),
        )
        report.figure(
            f"slow_writes_{name}",
            d["slow"],
            "writes",
            f"slower than {SLOW_MS:g} ms during the build",
        )
        report.figure(
            f"write_p99_{name}",
            d["p99_ms"],
            "ms",
            f"during the build; baseline {a['baseline']['p99_ms']:.1f} ms",
        )
        report.figure(f"write_max_{name}", d["max_ms"], "ms", "during the build")
    r, p = arms["runner"]["during"], arms["plain"]["during"]
    p99_ratio = p["p99_ms"] / r["p99_ms"] if r["p99_ms"] else float("inf")
    report.figure("ratio_write_p99_plain_vs_runner", p99_ratio, "x")
    report.figure("ratio_write_max_plain_vs_runner", p["max_ms"] / r["max_ms"], "x")
    report.figure(
        "ratio_build_time_runner_vs_plain",
        arms["runner"]["build_s"] / arms["plain"]["build_s"],
        "x",
        "what not blocking costs in build time",
    )
    report.finish(
        f"during the index build on {rows:,} rows at {args.migrations_rate:g} writes/s: runner "
        f"{r['failed']} failed / {r['slow']} held-up writes, p99 {r['p99_ms']:.1f} ms; "
        f"plain CREATE INDEX "
        f"{p['failed']} failed / {p['slow']} held-up, p99 {p['p99_ms']:.0f} ms ({p99_ratio:.1f}x)"
    )
    return report
