"""``portalctl`` killed at every transition of a promotion, of a release's rollback and of a
scripted rollback, on the real local stack: ``status`` tells the truth right after the crash
(what the ledger holds, what the target runs, what is unfinished) and ``resume`` finishes the
job exactly once. A promotion that fails halfway puts stable back.

The crash points live in ``tests/crashing_portalctl.py`` (a SIGKILL right after the named ledger
write, or inside the target action)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from itertools import count
from pathlib import Path

import pytest

from rollout.ledger import Action, FileLedgerStore, Ledger, LedgerDoc
from rollout.local.stack import LocalStack
from tests.conftest import REPO
from tests.local_controls import app_instances

from .conftest import fast_stack_file

pytestmark = pytest.mark.slow
PAUSING = [{"weight": 30, "analysis": "2s"}, {"pause": True}, {"weight": 100, "analysis": "2s"}]
ONE_STEP = [{"weight": 50, "analysis": "2s"}]
LEASE = "2s"
KILLED = -9
versions = count(1)


def ctl(root: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    head = ["-m", "tests.crashing_portalctl", crash] if crash else ["-m", "rollout.cli"]
    return subprocess.run(
        [sys.executable, *head, *args, "--local", "--dir", str(root)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def status(root: Path) -> dict:
    result = ctl(root, "release", "status", "--json")
    assert result.returncode == 0, result.stderr
    doc: dict = json.loads(result.stdout)
    return doc


def ledger(root: Path) -> LedgerDoc:
    return Ledger(FileLedgerStore(root / "ledger.json")).read()


def stable_in_ledger(root: Path) -> str:
    doc = ledger(root)
    return doc.stable.version if doc.stable else "1.0.0"


def stable_versions(stack: LocalStack) -> set[str]:
    out = set()
    for _name, track, url in app_instances(stack):
        if track == "stable":
            with urllib.request.urlopen(f"{url}/api/health", timeout=5) as r:
                out.add(json.loads(r.read())["version"])
    return out


def canaries(stack: LocalStack) -> list[str]:
    return [name for name, track, _url in app_instances(stack) if track == "canary"]


def wait_for_lease_expiry(root: Path, timeout: float = 60) -> None:
    """Until the killed holder's lease has run out (its TTL is LEASE)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = ledger(root)
        if not doc.lease_live(time.time()):
            return
        time.sleep(0.2)
    pytest.fail(f"the dead holder's lease did not expire within {timeout:.0f}s")


def paused_release(root: Path) -> str:
    wait_for_lease_expiry(root)  # a holder killed by the test before may still hold it
    version = f"20.{next(versions)}.0"
    started = ctl(root, "release", "start", "--version", version)
    assert started.returncode == 3, started.stdout + started.stderr  # paused for approval
    return version


def promoted_release(root: Path) -> str:
    wait_for_lease_expiry(root)
    version = f"21.{next(versions)}.0"
    started = ctl(root, "release", "start", "--version", version)
    assert started.returncode == 0, started.stdout + started.stderr
    return version


def assert_taken_over(root: Path, release_id: str) -> None:
    """The resuming portalctl recorded that it took the dead one's lease over."""
    doc = ledger(root)
    takeover = doc.takeovers[-1]
    assert takeover.release_id == release_id and takeover.action == "resume"
    assert takeover.previous != takeover.holder and takeover.expired_at <= takeover.at


@pytest.mark.parametrize("point", ["promote:intent", "promote:stable", "promote:done"])
def test_killed_during_a_promotion_status_tells_the_truth_and_resume_finishes_it(
    point, stack_root, stack, load
):
    with fast_stack_file(stack_root, steps=PAUSING, leaseTtl=LEASE):
        before = stable_in_ledger(stack_root)
        version = paused_release(stack_root)
        killed = ctl(stack_root, "release", "promote", crash=point)
        assert killed.returncode == KILLED, killed.stdout + killed.stderr

        seen = status(stack_root)
        runs = seen["running"]["stable_version"]
        assert {runs} == stable_versions(stack)  # status reads what the target runs
        if point == "promote:done":
            assert seen["stable"]["version"] == version and seen["active"] is None
            assert seen["pending"] is None and runs == version
            assert ctl(stack_root, "release", "resume").returncode == 2  # nothing to finish
            return
        assert seen["stable"]["version"] == before  # the ledger moves only once it is done
        assert seen["pending"]["action"] == "promote"
        assert "release resume" in seen["pending"]["detail"]
        assert runs == (version if point == "promote:stable" else before)

        wait_for_lease_expiry(stack_root)
        resumed = ctl(stack_root, "release", "resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "PROMOTED" in resumed.stdout
    doc = ledger(stack_root)
    release = doc.latest()
    assert release.version == version and release.status == "PROMOTED"
    assert [t.action for t in release.transitions].count(Action.PROMOTE) == 1
    assert all(t.state == "done" for t in release.transitions)
    assert doc.stable.version == version and doc.stable_history[-1].version == version
    assert stable_versions(stack) == {version} and canaries(stack) == []
    assert_taken_over(stack_root, release.id)
    assert status(stack_root)["pending"] is None


@pytest.mark.parametrize("point", ["rollback:intent", "rollback:weight0", "rollback:done"])
def test_killed_during_a_rollback_status_tells_the_truth_and_resume_finishes_it(
    point, stack_root, stack, load
):
    with fast_stack_file(stack_root, steps=PAUSING, leaseTtl=LEASE):
        version = paused_release(stack_root)
        before = ledger(stack_root).stable.version
        killed = ctl(stack_root, "release", "abort", crash=point)
        assert killed.returncode == KILLED, killed.stdout + killed.stderr

        seen = status(stack_root)
        assert seen["stable"]["version"] == before == seen["running"]["stable_version"]
        if point == "rollback:done":
            assert seen["active"] is None and seen["pending"] is None
            assert seen["running"]["weight"] == 0 and canaries(stack) == []
            return
        assert seen["pending"]["action"] == "rollback"
        weight = 0 if point == "rollback:weight0" else 30
        assert seen["running"]["weight"] == weight
        assert f"the canary has {weight}% now" in seen["pending"]["detail"]

        wait_for_lease_expiry(stack_root)
        resumed = ctl(stack_root, "release", "resume")
        assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # rolled back
        assert "aborted by" in resumed.stdout
    release = ledger(stack_root).latest()
    assert release.version == version and release.status == "ABORTED"
    assert [t.action for t in release.transitions].count(Action.ROLLBACK) == 1
    assert all(t.state == "done" for t in release.transitions)
    assert canaries(stack) == [] and stable_versions(stack) == {before}
    assert status(stack_root)["running"]["weight"] == 0
    assert_taken_over(stack_root, release.id)


def test_a_promotion_that_fails_halfway_puts_stable_back_and_reports_aborted(
    stack_root, stack, load
):
    with fast_stack_file(stack_root, steps=PAUSING, leaseTtl=LEASE):
        before = stable_in_ledger(stack_root)
        version = paused_release(stack_root)
        failed = ctl(stack_root, "release", "promote", crash="promote:fail")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = " ".join(failed.stdout.split())
    assert "promotion failed" in out and "stuck halfway" in out
    assert f"stable restored to {before}" in out
    release = ledger(stack_root).latest()
    assert release.version == version and release.status == "ABORTED"
    assert f"stable restored to {before}" in str(release.reason)
    assert ledger(stack_root).stable.version == before
    assert stable_versions(stack) == {before} and canaries(stack) == []
    seen = status(stack_root)
    assert seen["pending"] is None and seen["running"]["stable_version"] == before


@pytest.mark.parametrize("point", ["scripted:intent", "scripted:stable", "scripted:done"])
def test_killed_during_a_scripted_rollback_resume_finishes_it(point, stack_root, stack, load):
    with fast_stack_file(stack_root, steps=ONE_STEP, leaseTtl=LEASE):
        previous = stable_in_ledger(stack_root)
        version = promoted_release(stack_root)
        killed = ctl(stack_root, "rollback", crash=point)
        assert killed.returncode == KILLED, killed.stdout + killed.stderr

        seen = status(stack_root)
        runs = seen["running"]["stable_version"]
        assert {runs} == stable_versions(stack)
        if point == "scripted:done":
            assert seen["stable"]["version"] == previous == runs and seen["pending"] is None
            return
        assert seen["stable"]["version"] == version  # not rolled back until it is done
        assert seen["pending"]["action"] == "scripted_rollback"
        assert runs == (previous if point == "scripted:stable" else version)
        wait_for_lease_expiry(stack_root)
        # nothing else may start meanwhile, even with the lease free
        refused = ctl(stack_root, "release", "start", "--version", "22.0.0")
        assert refused.returncode == 2 and "interrupted" in refused.stderr
        resumed = ctl(stack_root, "release", "resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"to {previous}" in resumed.stdout
    doc = ledger(stack_root)
    assert doc.rollbacks[-1].state == "done" and doc.stable.version == previous
    assert [s.version for s in doc.stable_history[-2:]] == [version, previous]
    assert stable_versions(stack) == {previous}
    assert doc.takeovers[-1].release_id == doc.rollbacks[-1].id
