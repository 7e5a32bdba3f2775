"""The release ledger: its typed document and the store that keeps it."""

from rollout.ledger.model import (
    SCHEMA_VERSION,
    Action,
    Incident,
    IncidentAction,
    Lease,
    LedgerDoc,
    Release,
    ReleaseStatus,
    Request,
    SilenceRecord,
    Stable,
    TransitionState,
)
from rollout.ledger.store import (
    FileLedgerStore,
    Ledger,
    LedgerError,
    ReleaseInProgress,
    new_holder,
    require,
)

__all__ = [
    "SCHEMA_VERSION",
    "Action",
    "FileLedgerStore",
    "Incident",
    "IncidentAction",
    "Lease",
    "Ledger",
    "LedgerDoc",
    "LedgerError",
    "Release",
    "ReleaseInProgress",
    "ReleaseStatus",
    "Request",
    "SilenceRecord",
    "Stable",
    "TransitionState",
    "new_holder",
    "require",
]
