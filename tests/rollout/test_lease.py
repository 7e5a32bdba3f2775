"""One release per stack, for as long as it acts: the lease of a ``portalctl`` waiting on a long
migration outlives ``leaseTtl`` (renewed in the background), so a second ``portalctl`` is
refused whatever it asks; a holder that froze past its lease is taken over (both holders in the
ledger) and, thawed, stops acting. On the real local stack: the migration is made long by holding
the migration runner's advisory lock in Postgres, as a concurrent runner would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.migrate import LOCK_KEY
from rollout.ledger import Action, FileLedgerStore, Ledger, LedgerDoc, TransitionState
from rollout.local.stack import LocalStack
from tests.conftest import REPO

from .conftest import fast_stack_file

pytestmark = pytest.mark.slow
TTL_S = 4.0
STEPS = [{"weight": 50, "analysis": "2s"}]


def ctl(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", *args, "--local", "--dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )


def run(root: Path, *args: str) -> tuple[int, str]:
    proc = ctl(root, *args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


def ledger(root: Path) -> LedgerDoc:
    return Ledger(FileLedgerStore(root / "ledger.json")).read()


@contextlib.contextmanager
def migration_lock(stack: LocalStack) -> Iterator[psycopg.Connection]:
    """Hold the migration runner's advisory lock: every migration waits until it is let go."""
    conn = psycopg.connect(stack.load()["database_url"], autocommit=True)
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        conn.close()


def wait_until(what: str, check, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def migrating(root: Path, version: str) -> bool:
    release = ledger(root).latest()
    return (
        release is not None
        and release.version == version
        and bool(release.transitions)
        and release.transitions[-1].action is Action.MIGRATE_EXPAND
        and release.transitions[-1].state is TransitionState.INTENT
    )


def test_a_second_portalctl_is_refused_all_through_a_migration_longer_than_the_lease(
    stack_root, stack, load
):
    with fast_stack_file(stack_root, steps=STEPS, leaseTtl=f"{TTL_S:g}s"):
        with migration_lock(stack):
            first = ctl(stack_root, "release", "start", "--version", "30.0.0")
            wait_until(
                "the release waiting on its migration", lambda: migrating(stack_root, "30.0.0")
            )
            holder = ledger(stack_root).lease.holder
            time.sleep(3 * TTL_S)  # three lease lifetimes into the migration
            for args in (
                ("release", "resume"),
                ("release", "start", "--version", "30.0.1"),
                ("rollback",),
                ("release", "contract"),
            ):
                code, out = run(stack_root, *args)
                assert code == 2, (args, out)
                assert holder in out or "in flight" in out, (args, out)
            doc = ledger(stack_root)
            assert doc.lease.holder == holder and doc.lease_live(time.time())
            assert doc.takeovers == [] or doc.takeovers[-1].holder != holder
            takeovers = len(doc.takeovers)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    doc = ledger(stack_root)
    assert doc.latest().status == "PROMOTED" and len(doc.takeovers) == takeovers
    assert [t.action for t in doc.latest().transitions].count(Action.MIGRATE_EXPAND) == 1


def test_a_frozen_holder_is_taken_over_and_stops_acting_when_it_thaws(stack_root, stack, load):
    with fast_stack_file(stack_root, steps=STEPS, leaseTtl=f"{TTL_S:g}s"):
        with migration_lock(stack):
            frozen = ctl(stack_root, "release", "start", "--version", "31.0.0")
            wait_until(
                "the release waiting on its migration", lambda: migrating(stack_root, "31.0.0")
            )
            first_holder = ledger(stack_root).lease.holder
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                wait_until(
                    "the frozen holder's lease running out",
                    lambda: not ledger(stack_root).lease_live(time.time()),
                )
                second = ctl(stack_root, "release", "resume")
                wait_until(
                    "the second portalctl taking the lease",
                    lambda: ledger(stack_root).lease.holder != first_holder,
                )
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            takeover = ledger(stack_root).takeovers[-1]
            assert takeover.previous == first_holder and takeover.action == "resume"
            second_holder = takeover.holder
        out, err = frozen.communicate(timeout=120)
        assert frozen.returncode == 4, out + err
        assert f"lost the lease of stack local to {second_holder}" in " ".join(err.split())
        out2, err2 = second.communicate(timeout=120)
    assert second.returncode == 0, out2 + err2
    release = ledger(stack_root).latest()
    assert release.version == "31.0.0" and release.status == "PROMOTED"
    assert release.holder == second_holder
    # the migration transition was redone by the second holder, once
    assert [t.action for t in release.transitions].count(Action.MIGRATE_EXPAND) == 1
    assert "took over the lease" in out2
