"""The release engine (``ReleaseEngine``) and how its runs end (``Outcome``)."""

from rollout.engine.context import LeaseLost
from rollout.engine.engine import LedgerStatus, ReleaseEngine
from rollout.engine.outcome import Outcome, OutcomeStatus, ReleaseError
from rollout.ledger import ReleaseInProgress

__all__ = [
    "LeaseLost",
    "LedgerStatus",
    "Outcome",
    "OutcomeStatus",
    "ReleaseEngine",
    "ReleaseError",
    "ReleaseInProgress",
]
