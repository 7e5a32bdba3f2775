"""How a release (or a scripted rollback) ended, and the reasons the engine stops a run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from rollout.analysis import GateResult
from rollout.ledger import Incident


class ReleaseError(RuntimeError):
    """A release cannot be started, resumed or changed; the message says why."""


class OutcomeStatus(StrEnum):
    PROMOTED = "PROMOTED"
    """The release is stable now."""
    ABORTED = "ABORTED"
    """The release was rolled back (a gate failed, or someone aborted it)."""
    HELD = "HELD"
    """Paused for approval or held by a policy: a human must promote, abort or resume."""
    ROLLED_BACK = "ROLLED_BACK"
    """A scripted rollback returned stable to an earlier version."""

    @property
    def exit_code(self) -> int:
        return {"PROMOTED": 0, "ROLLED_BACK": 0, "ABORTED": 1, "HELD": 3}[self.value]


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    release_id: str
    reason: str
    incident: Incident | None = None

    @property
    def exit_code(self) -> int:
        return self.status.exit_code


class StopKind(Enum):
    """Why a run leaves its steps early."""

    PROMOTE_NOW = "promote now"
    """An operator promoted: the remaining steps are skipped."""
    ROLL_BACK = "roll back"
    """A gate failed, a policy gave up, or an operator aborted."""
    HOLD = "hold"
    """A policy holds the weight until a human acts."""
    PAUSE = "pause"
    """A pause step waits for approval."""


class Stop(Exception):
    def __init__(self, kind: StopKind, reason: str, result: GateResult | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.result = result
