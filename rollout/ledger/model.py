"""The release ledger as types: one document per stack, with a schema version.

The document holds the lease (one release per stack at a time), the stable version and its
history, every release with its transitions (``intent`` then ``done``), verdicts, samples and
incident, the scripted rollbacks, the contract migrations applied and the incidents of runbook
runs that concerned no release. Statuses and actions are enums; an incident has one shape
wherever it comes from (a failed gate, an operator, a runbook run).

Documents written before the schema had a version (``"version": 1``) are read and upgraded;
schema 2 reads as it is (3 only added records). A document of a newer schema than this code
knows is refused, naming both versions, rather than half understood.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 3
"""3: lease takeovers, a scripted rollback's ``failed`` state."""


class ReleaseStatus(StrEnum):
    PROGRESSING = "PROGRESSING"
    PAUSED = "PAUSED"
    """At a pause step: waits for ``portalctl release promote`` (or ``abort``)."""
    HELD = "HELD"
    """A verdict policy said hold: waits for ``resume``, ``promote`` or ``abort``."""
    PROMOTED = "PROMOTED"
    ABORTED = "ABORTED"

    @property
    def active(self) -> bool:
        return self in (ReleaseStatus.PROGRESSING, ReleaseStatus.PAUSED, ReleaseStatus.HELD)


class Action(StrEnum):
    """A transition of a release, written as ``intent`` before it is acted on."""

    MIGRATE_EXPAND = "migrate_expand"
    DEPLOY_CANARY = "deploy_canary"
    SET_WEIGHT = "set_weight"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class TransitionState(StrEnum):
    INTENT = "intent"
    DONE = "done"
    FAILED = "failed"
    """Tried, failed, and undone (a scripted rollback whose stable was put back)."""


class Request(StrEnum):
    """What an operator (or a runbook) asks of the release in flight."""

    PROMOTE = "promote"
    ABORT = "abort"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Lease(Record):
    holder: str
    release_id: str | None = None
    """The release (or ``rollback-...``, ``contract-...`` run) the holder acts on."""
    expires_at: float


class Takeover(Record):
    """A lease taken over after it expired: who held it, for what, and who took it."""

    at: float
    previous: str
    """The holder whose lease had expired (a ``portalctl`` that died, froze or lost its way to
    the ledger)."""
    expired_at: float
    release_id: str | None = None
    holder: str
    """The holder that took it."""
    action: str
    """What the new holder took it for (``resume``, ``abort``...)."""


class Stable(Record):
    """A version stable ran (or runs), and the release that put it there."""

    version: str
    image: str | None = None
    release_id: str | None = None
    at: float = 0.0


class TransitionArgs(Record):
    weight: int | None = None
    step: int | None = None
    replicas: int | None = None


class Transition(Record):
    seq: int
    action: Action
    args: TransitionArgs = Field(default_factory=TransitionArgs)
    state: TransitionState
    at: float
    done_at: float | None = None


class CheckRecord(Record):
    """One check of a gate verdict (the gates may add fields: they are kept)."""

    model_config = ConfigDict(extra="allow")
    name: str
    verdict: str
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    query: str = ""
    detail: str = ""


class VerdictRecord(Record):
    model_config = ConfigDict(extra="allow")
    step: int
    weight: int
    at: float
    elapsed_s: float
    gate: str
    verdict: str
    reason: str
    checks: list[CheckRecord] = Field(default_factory=list)


class Sample(Record):
    """One check round's measurements (what the report draws)."""

    model_config = ConfigDict(extra="allow")
    at: float
    weight: int
    step: int
    verdicts: dict[str, str] = Field(default_factory=dict)


class RequestRecord(Record):
    action: Request
    by: str
    at: float
    handled: bool


class IncidentAction(Record):
    at: float
    action: str
    """``rollback``, ``flush_cache``... (a runbook action's name)."""
    detail: str
    by: str


class Finding(Record):
    step: str
    level: str
    text: str


class Incident(Record):
    """What went wrong, what was measured, what to follow, and what was done about it."""

    id: str
    opened_at: float
    reason: str
    runbook: str | None = None
    """The runbook to follow (a release's) or that ran (a runbook run's)."""
    opened_by: str | None = None
    release_id: str | None = None
    version: str | None = None
    gate: str | None = None
    """``health``, ``metrics``, ``migration``, ``target``, or ``manual`` (an abort)."""
    check: str | None = None
    query: str | None = None
    values: dict[str, float | None] = Field(default_factory=dict)
    """``canary``, ``stable`` and ``threshold`` of the failing check."""
    alert: str | None = None
    findings: list[Finding] = Field(default_factory=list)
    actions: list[IncidentAction] = Field(default_factory=list)


class SilenceRecord(Record):
    """The Alertmanager silence of a release's expected noise (``--silence``)."""

    alerts: list[str]
    id: str | None = None
    """The silence's id while one exists (a new one after a hold and a resume)."""
    created_at: float | None = None
    ends_at: float | None = None
    """When Alertmanager ends it by itself (renewed at every step, like a lease)."""
    ended_at: float | None = None
    """When ``portalctl`` expired it (the release ended, paused or was held)."""
    detail: str | None = None
    """The last failure to create, extend or expire it."""


class Release(Record):
    id: str
    version: str
    image: str | None = None
    status: ReleaseStatus
    created_at: float
    ended_at: float | None = None
    step: int = 0
    """Index of the step in progress (the number of steps passed)."""
    weight: int = 0
    steps: list[str] = Field(default_factory=list)
    previous_stable: Stable | None = None
    transitions: list[Transition] = Field(default_factory=list)
    verdicts: list[VerdictRecord] = Field(default_factory=list)
    samples: list[Sample] = Field(default_factory=list)
    folded: dict[str, Any] | None = None
    """The evidence of the readings folded out of ``samples`` (``rollout.folded.Folded``)."""
    requests: list[RequestRecord] = Field(default_factory=list)
    incident: Incident | None = None
    holder: str | None = None
    reason: str | None = None
    summarized: bool = False
    """Only its summary is here; the whole record is in the ledger's archive."""
    silence: SilenceRecord | None = None
    report: str | None = None
    """Where the release's report was written (the last one, at its end or hold)."""

    def pending_transition(self) -> Transition | None:
        """The last transition when it was written as intent and never done (a crash)."""
        last = self.transitions[-1] if self.transitions else None
        return last if last is not None and last.state is TransitionState.INTENT else None

    def done(self, action: Action) -> bool:
        return any(t.action is action and t.state is TransitionState.DONE for t in self.transitions)


class ScriptedRollback(Record):
    id: str
    from_: Stable = Field(
        validation_alias=AliasChoices("from", "from_"), serialization_alias="from"
    )
    to: Stable
    at: float
    forced: bool
    state: TransitionState
    error: str | None = None
    """Why it failed (``state`` is ``failed``: stable was put back where it was)."""


class ContractMigration(Record):
    release_id: str
    version: str
    at: float
    applied: list[str]
    by: str


class LedgerDoc(Record):
    schema_version: int = SCHEMA_VERSION
    stack: str = ""
    target: str = ""
    lease: Lease | None = None
    stable: Stable | None = None
    stable_history: list[Stable] = Field(default_factory=list)
    releases: list[Release] = Field(default_factory=list)
    contract_migrations: list[ContractMigration] = Field(default_factory=list)
    rollbacks: list[ScriptedRollback] = Field(default_factory=list)
    incidents: list[Incident] = Field(default_factory=list)
    """Incidents of runbook runs that concerned no release."""
    takeovers: list[Takeover] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schema_version" not in data:
            return upgrade_v1(data)
        if isinstance(data, dict):
            version = data.get("schema_version")
            if isinstance(version, int) and not isinstance(version, bool):
                if version > SCHEMA_VERSION:
                    raise ValueError(
                        f"written by a newer portalctl (schema {version}); this one reads "
                        f"schemas up to {SCHEMA_VERSION}: upgrade portalctl"
                    )
                return {**data, "schema_version": SCHEMA_VERSION}
        return data

    def find(self, release_id: str) -> Release | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def active(self) -> Release | None:
        """The release not yet finished (at most one)."""
        return next((r for r in reversed(self.releases) if r.status.active), None)

    def latest(self) -> Release | None:
        return self.releases[-1] if self.releases else None

    def lease_live(self, now: float) -> bool:
        return self.lease is not None and self.lease.expires_at > now


def upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A document of the first, unversioned schema (``"version": 1``) in today's shape."""
    out = {k: v for k, v in doc.items() if k not in ("version", "_revision")}
    out["schema_version"] = SCHEMA_VERSION
    releases = []
    for old in out.get("releases") or []:
        release = {k: v for k, v in old.items() if k != "env"}
        if release.get("status") == "PENDING":
            release["status"] = "PROGRESSING"
        incident = release.get("incident")
        if incident is not None:
            release["incident"] = _v1_incident(incident, release)
        releases.append(release)
    out["releases"] = releases
    out["incidents"] = [_v1_run(run) for run in out.get("incidents") or []]
    return out


def _v1_incident(incident: dict[str, Any], release: dict[str, Any]) -> dict[str, Any]:
    return {
        **incident,
        "id": incident.get("release_id") or release.get("id"),
        "reason": incident.get("reason") or "",
        "values": dict(incident.get("values") or {}),
    }


def _v1_run(run: dict[str, Any]) -> dict[str, Any]:
    """A runbook run's record of the first schema (``by`` and no reason)."""
    out = {k: v for k, v in run.items() if k != "by"}
    out.setdefault("opened_by", run.get("by"))
    out.setdefault("reason", f"runbook {run.get('runbook')} run by {run.get('by')}")
    return out
