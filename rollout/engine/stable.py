"""Stable's history: the scripted rollback to a known-good release, and the contract migrations
that make an older release unsafe to return to."""

from __future__ import annotations

import time
from collections.abc import Callable

from rollout.engine.context import Context
from rollout.engine.outcome import Outcome, OutcomeStatus, ReleaseError
from rollout.ledger import LedgerDoc, ReleaseInProgress, Stable, TransitionState
from rollout.ledger.model import ContractMigration, ScriptedRollback
from rollout.ports import ReleaseSpec

RecordVersion = Callable[[str, str | None], None]


def release_id_for(version: str, now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{version}"


def _goal(doc: LedgerDoc, to: str | None) -> tuple[Stable, Stable]:
    """The stable running now and the one to return to."""
    history = doc.stable_history
    current = doc.stable
    if current is None or not history:
        raise ReleaseError("the ledger has no stable history yet: nothing to roll back to")
    if to is None:
        older = [h for h in history[:-1] if h.version != current.version]
        if not older:
            raise ReleaseError(f"{current.version} is the only known-good version")
        return current, older[-1]
    matches = [h for h in history if to in (h.release_id, h.version)]
    if not matches:
        known = ", ".join(sorted({h.version for h in history}))
        raise ReleaseError(f"{to!r} is not a known-good release (known: {known})")
    return current, matches[-1]


def rollback(ctx: Context, record: RecordVersion, to: str | None, force: bool) -> Outcome:
    """Stable back to the last known-good release, or ``to`` (a release id or version).
    Refused where a contract migration ran since, unless ``force``."""
    doc = ctx.ledger.read()
    if doc.active() is not None and doc.lease_live(ctx.clock()):
        raise ReleaseInProgress("a release is in flight: `portalctl release abort` it first")
    current, goal = _goal(doc, to)
    if goal.version == current.version and goal.image == current.image:
        raise ReleaseError(f"{goal.version} is already the stable version")
    since = [c for c in doc.contract_migrations if c.at > goal.at]
    if since and not force:
        applied = ", ".join(m for c in since for m in c.applied) or "?"
        raise ReleaseError(
            f"cannot roll back to {goal.version}: contract migration(s) {applied} ran "
            "since, so its code may not work with the schema; use --force to roll back anyway"
        )
    now = ctx.clock()
    rid = f"rollback-{release_id_for(goal.version, now)}"

    def begin(d: LedgerDoc) -> None:
        ctx.lease.take(d, rid)
        d.rollbacks.append(
            ScriptedRollback(
                id=rid,
                from_=current,
                to=goal,
                at=now,
                forced=bool(since),
                state=TransitionState.INTENT,
            )
        )

    ctx.ledger.update(begin)
    try:
        ctx.target.workloads.set_stable(goal.version, goal.image)

        def finish(d: LedgerDoc) -> None:
            d.rollbacks[-1].state = TransitionState.DONE
            d.stable = Stable(
                version=goal.version, image=goal.image, release_id=goal.release_id, at=ctx.clock()
            )
            d.stable_history.append(d.stable.model_copy())

        ctx.ledger.update(finish)
        record(goal.version, goal.image)
    finally:
        ctx.lease.drop(ctx.ledger)
    reason = f"stable rolled back from {current.version} to {goal.version}"
    ctx.emit("rolled_back", rid, reason)
    return Outcome(OutcomeStatus.ROLLED_BACK, rid, reason)


def contract(ctx: Context, by: str) -> list[str]:
    """Run the contract migrations of the stable version (once no older version runs) and
    record them: from now on a rollback to a release before them is refused."""
    doc = ctx.ledger.read()
    if doc.active() is not None:
        raise ReleaseError("a release is in flight: contract migrations wait until it ends")
    stable = doc.stable
    version = stable.version if stable else ctx.target.workloads.state().stable_version
    release_id = (stable.release_id if stable else None) or "stable"
    spec = ReleaseSpec(release_id, version, stable.image if stable else None)
    result = ctx.target.migrator.run(spec, "contract")
    if not result.ok:
        raise ReleaseError(f"contract migration failed: {result.detail}")
    if result.applied:
        now = ctx.clock()
        record = ContractMigration(
            release_id=spec.release_id, version=version, at=now, applied=list(result.applied), by=by
        )
        ctx.ledger.update(lambda d: d.contract_migrations.append(record))
    return list(result.applied)
