"""What the engine writes into a release's record: transitions (write-ahead), incidents."""

from __future__ import annotations

from rollout.analysis import Check, GateResult
from rollout.engine.outcome import Stop
from rollout.ledger import Action, Incident, Release, TransitionState
from rollout.ledger.model import Transition, TransitionArgs

RUNBOOK = "release-aborted"
"""The runbook a release's incident points to."""


def intent(
    release: Release, action: Action, args: TransitionArgs, now: float, redo_last: bool = False
) -> None:
    """Record ``action`` as about to happen (write-ahead). When the last record is this action,
    still ``intent`` with the same arguments (a crash interrupted it), that record is performed
    again; ``redo_last``: whatever its state (a promotion or rollback is one transition)."""
    transitions = release.transitions
    last = transitions[-1] if transitions else None
    redo = redo_last or (last is not None and last.state is TransitionState.INTENT)
    if last is not None and last.action is action and redo and (redo_last or last.args == args):
        return
    transitions.append(
        Transition(
            seq=len(transitions) + 1,
            action=action,
            args=args,
            state=TransitionState.INTENT,
            at=now,
        )
    )


def done(release: Release, at: float) -> None:
    last = release.transitions[-1]
    last.state = TransitionState.DONE
    last.done_at = at


def failure(gate: str, name: str, detail: str) -> GateResult:
    """A failure outside the gates (a migration, the target) as a gate result."""
    check = Check(name, "FAIL", None, None, None, "", detail)
    return GateResult(gate, "FAIL", (check,), detail)


def incident_for(release: Release, stop: Stop, now: float) -> Incident:
    """The incident of a rolled-back release: the gate, check, query and values that failed."""
    result = stop.result
    check = result.failing() if result is not None else None
    if check is None and result is not None and result.checks:
        check = result.checks[0]
    values = (
        {"canary": check.value, "stable": check.baseline, "threshold": check.threshold}
        if check
        else {}
    )
    return Incident(
        id=release.id,
        release_id=release.id,
        version=release.version,
        opened_at=now,
        gate=result.gate if result is not None else "manual",
        check=check.name if check else None,
        query=check.query if check else None,
        values=values,
        reason=stop.reason,
        runbook=RUNBOOK,
    )
