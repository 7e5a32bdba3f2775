"""What ``portalctl release status`` shows: the ledger, what the target runs now, and what an
interrupted transition leaves uncertain, in words, after any crash point."""

from __future__ import annotations

from pydantic import BaseModel

from rollout.ledger import Action, Lease, LedgerDoc, Release, Stable, TransitionState
from rollout.ledger.model import ContractMigration, ScriptedRollback, Takeover
from rollout.ports import TargetState


class Pending(BaseModel):
    """A transition written as intent and not (yet) done: a crash, or a hold in the middle."""

    action: str
    release_id: str
    since: float
    detail: str
    """What may be true now, and which command finishes it."""


class LedgerStatus(BaseModel):
    """What ``portalctl release status`` shows."""

    stack: str
    target: str
    stable: Stable | None
    lease: Lease | None
    lease_live: bool
    active: Release | None
    releases: list[Release]
    contract_migrations: list[ContractMigration]
    pending: Pending | None = None
    running: TargetState | None = None
    """What the target runs now (``None`` when it could not be read: ``running_error``)."""
    running_error: str | None = None
    takeovers: list[Takeover] = []


def pending_of(doc: LedgerDoc, running: TargetState | None) -> Pending | None:
    """The interrupted transition of the release in flight, or an interrupted scripted
    rollback, with what the target shows of it."""
    runs = f" (the target runs {running.stable_version})" if running else ""
    weight = f" (the canary has {running.weight}% now)" if running else ""
    active = doc.active()
    last = active.pending_transition() if active is not None else None
    if active is not None and last is not None:
        prev = active.previous_stable.version if active.previous_stable else "the previous version"
        details = {
            Action.PROMOTE: f"the promotion of {active.version} was interrupted: stable runs "
            f"{prev} or {active.version}{runs}; `portalctl release resume` finishes it, "
            f"`portalctl release abort` puts {prev} back",
            Action.ROLLBACK: f"the rollback of {active.version} was interrupted{weight}; "
            "`portalctl release resume` or `abort` finishes it",
            Action.SET_WEIGHT: f"the canary weight was being set to {last.args.weight}%{weight}; "
            "`portalctl release resume` sets it again",
            Action.DEPLOY_CANARY: f"the canary {active.version} was being deployed; "
            "`portalctl release resume` deploys it again",
            Action.MIGRATE_EXPAND: f"the expand migrations of {active.version} were running; "
            "`portalctl release resume` runs them again (each applies once)",
        }
        return Pending(
            action=str(last.action),
            release_id=active.id,
            since=last.at,
            detail=details[last.action],
        )
    scripted = _pending_rollback(doc)
    if scripted is not None:
        return Pending(
            action="scripted_rollback",
            release_id=scripted.id,
            since=scripted.at,
            detail=f"the rollback of stable from {scripted.from_.version} to "
            f"{scripted.to.version} was interrupted{runs}; `portalctl release resume` finishes it",
        )
    return None


def _pending_rollback(doc: LedgerDoc) -> ScriptedRollback | None:
    last = doc.rollbacks[-1] if doc.rollbacks else None
    return last if last is not None and last.state is TransitionState.INTENT else None
