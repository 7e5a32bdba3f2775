"""Stable's history: the scripted rollback to a known-good release, and the contract migrations
that make an older release unsafe to return to. Both take the lease like a release does.

A scripted rollback is written ahead like a release's transitions: its record is ``intent``
before stable is touched and ``done`` once stable runs the goal (and the stack file says so), and
only then does the ledger's ``stable`` change. Killed in between, ``portalctl release resume``
finishes it. If the target refuses it, stable is put back on the version it ran and the record
is ``failed`` with the reason.
"""

from __future__ import annotations

import time

from rollout.engine.context import Context, ProviderGaveUp
from rollout.engine.endings import Endings
from rollout.engine.outcome import Outcome, OutcomeStatus, ReleaseError
from rollout.ledger import LedgerDoc, Stable, TransitionState
from rollout.ledger.model import ContractMigration, ScriptedRollback
from rollout.ports import ReleaseSpec, TargetError


class ReleaseInFlight(ReleaseError):
    """A scripted rollback or contract run refused while a release is in flight (or a scripted
    rollback waits to be finished): nothing was changed."""


def release_id_for(version: str, now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{version}"


def pending_rollback(doc: LedgerDoc) -> ScriptedRollback | None:
    """The scripted rollback that was interrupted (its record still ``intent``)."""
    last = doc.rollbacks[-1] if doc.rollbacks else None
    return last if last is not None and last.state is TransitionState.INTENT else None


def refuse_pending_rollback(doc: LedgerDoc) -> None:
    pending = pending_rollback(doc)
    if pending is not None:
        raise ReleaseInFlight(
            f"the rollback of stable to {pending.to.version} ({pending.id}) was interrupted: "
            "`portalctl release resume` finishes it first"
        )


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
        versions = list(dict.fromkeys(h.version for h in reversed(history)))
        known = ", ".join(versions[:10])
        if len(versions) > 10:
            known += f" and {len(versions) - 10} older"
        raise ReleaseError(f"{to!r} is not a known-good release (known: {known})")
    return current, matches[-1]


def rollback(ctx: Context, endings: Endings, to: str | None, force: bool) -> Outcome:
    """Stable back to the last known-good release, or ``to`` (a release id or version).
    Refused where a contract migration ran since, unless ``force``."""
    doc = ctx.ledger.read()
    if doc.active() is not None:
        raise ReleaseInFlight("a release is in flight: `portalctl release abort` it first")
    refuse_pending_rollback(doc)
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
    record = ScriptedRollback(
        id=rid, from_=current, to=goal, at=now, forced=bool(since), state=TransitionState.INTENT
    )

    def begin(d: LedgerDoc) -> None:
        if d.active() is not None:
            raise ReleaseInFlight("a release is in flight: `portalctl release abort` it first")
        refuse_pending_rollback(d)
        d.rollbacks.append(record.model_copy())

    ctx.take(begin, rid, "rollback")
    return _finish(ctx, endings, record)


def finish_rollback(ctx: Context, endings: Endings) -> Outcome:
    """``resume`` of an interrupted scripted rollback: stable set to its goal again."""
    found: list[ScriptedRollback] = []

    def take(d: LedgerDoc) -> None:
        pending = pending_rollback(d)
        if pending is None:
            raise ReleaseError("no release in flight to resume")
        found.append(pending.model_copy())

    pending = pending_rollback(ctx.ledger.read())
    ctx.take(take, pending.id if pending else "", "resume")
    ctx.emit("info", found[0].id, f"finishing the interrupted rollback to {found[0].to.version}")
    return _finish(ctx, endings, found[0])


def _finish(ctx: Context, endings: Endings, record: ScriptedRollback) -> Outcome:
    rid, current, goal = record.id, record.from_, record.to
    try:
        with ctx.holding():
            try:
                ctx.act(
                    rid,
                    "the rollback",
                    lambda: _set_stable(ctx, goal),
                )
            except (ProviderGaveUp, TargetError) as exc:
                return _undo(ctx, rid, current, goal, exc)
            note = endings.record_version(rid, goal.version, goal.image)

            def finish(d: LedgerDoc) -> None:
                mine = next(r for r in d.rollbacks if r.id == rid)
                mine.state = TransitionState.DONE
                d.stable = Stable(
                    version=goal.version,
                    image=goal.image,
                    release_id=goal.release_id,
                    at=ctx.clock(),
                )
                d.stable_history.append(d.stable.model_copy())

            ctx.record(rid, finish)
    finally:
        ctx.lease.drop(ctx.ledger)
    reason = f"stable rolled back from {current.version} to {goal.version}{note}"
    ctx.emit("rolled_back", rid, reason)
    return Outcome(OutcomeStatus.ROLLED_BACK, rid, reason)


def _set_stable(ctx: Context, to: Stable) -> None:
    ctx.target.workloads.set_stable(to.version, to.image)


def _undo(ctx: Context, rid: str, current: Stable, goal: Stable, error: BaseException) -> Outcome:
    """The rollback failed: stable back on the version it ran, the record ``failed``. If even
    that cannot be done, the record stays ``intent`` for ``resume``."""
    try:
        ctx.act(
            rid,
            "putting stable back",
            lambda: _set_stable(ctx, current),
        )
    except (ProviderGaveUp, TargetError) as exc:
        reason = (
            f"the rollback to {goal.version} failed ({error}) and stable could not be put back "
            f"on {current.version} ({exc}): `portalctl release resume` finishes the rollback"
        )
        ctx.emit("held", rid, reason)
        return Outcome(OutcomeStatus.HELD, rid, reason)

    def failed(d: LedgerDoc) -> None:
        mine = next(r for r in d.rollbacks if r.id == rid)
        mine.state, mine.error = TransitionState.FAILED, str(error)

    ctx.record(rid, failed)
    reason = f"the rollback to {goal.version} failed ({error}); stable runs {current.version} again"
    ctx.emit("rolled_back", rid, reason)
    return Outcome(OutcomeStatus.ABORTED, rid, reason)


def contract(ctx: Context, by: str) -> list[str]:
    """Run the contract migrations of the stable version (once no older version runs) and
    record them: from now on a rollback to a release before them is refused."""
    doc = ctx.ledger.read()
    if doc.active() is not None:
        raise ReleaseInFlight("a release is in flight: contract migrations wait until it ends")
    refuse_pending_rollback(doc)
    stable = doc.stable
    version = stable.version if stable else ctx.target.workloads.state().stable_version
    release_id = (stable.release_id if stable else None) or "stable"
    spec = ReleaseSpec(release_id, version, stable.image if stable else None)
    rid = f"contract-{version}"

    def begin(d: LedgerDoc) -> None:
        if d.active() is not None:
            raise ReleaseInFlight("a release is in flight: contract migrations wait until it ends")

    ctx.take(begin, rid, "contract")
    try:
        with ctx.holding():
            try:
                result = ctx.act(
                    rid,
                    "the contract migrations",
                    lambda: ctx.target.migrator.run(spec, "contract"),
                )
            except ProviderGaveUp as exc:
                raise ReleaseError(f"contract migration not run: {exc}") from exc
            if not result.ok:
                raise ReleaseError(f"contract migration failed: {result.detail}")
            if result.applied:
                record = ContractMigration(
                    release_id=spec.release_id,
                    version=version,
                    at=ctx.clock(),
                    applied=list(result.applied),
                    by=by,
                )
                ctx.record(rid, lambda d: d.contract_migrations.append(record))
    finally:
        ctx.lease.drop(ctx.ledger)
    return list(result.applied)
