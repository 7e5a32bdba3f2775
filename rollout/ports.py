"""The ports between the release engine (and the runbooks, and ``portalctl``) and what they drive.

Small interfaces named for what their users need, after flagger's router and metrics-provider
split: ``Workloads`` run versions, a ``TrafficRouter`` sets and reads the canary's share,
a ``Migrator`` runs a version's migrations, a ``LedgerStore`` keeps the ledger with
compare-and-swap, ``Telemetry`` answers PromQL and publishes release events, ``Alerting`` posts
release notifications and silences to Alertmanager, ``Diagnostics`` reads instances, events and
Jobs, and ``AppAdmin`` calls the service's operational endpoints.

Two backends implement every port: Kubernetes (``rollout.k8s``) and the local stack
(``rollout.local``). Where something cannot exist on one (Kubernetes events on the local stack),
the port's type says so: the call returns ``Unavailable`` with the reason, never a missing method.

Every method that changes something is idempotent: the engine writes a transition to the ledger
before acting on it and, after a crash, performs the last unfinished transition again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contract.labels import Track
from contract.names import Phase
from rollout.prometheus import Prometheus

__all__ = [
    "AdminAnswer",
    "Alerting",
    "AlertingError",
    "AppAdmin",
    "ClusterEvent",
    "ConflictError",
    "Diagnostics",
    "HealthProbe",
    "Instance",
    "JobStatus",
    "LedgerStore",
    "MigrationResult",
    "Migrator",
    "Notification",
    "Phase",
    "ReleaseEvent",
    "ReleaseSpec",
    "SilenceSpec",
    "Target",
    "TargetError",
    "TargetState",
    "TargetUnreachable",
    "Telemetry",
    "TelemetryError",
    "TrafficRouter",
    "Unavailable",
    "Workloads",
]


class TargetError(RuntimeError):
    """The target could not do what was asked (timeout, API error); the message says what."""


class TargetUnreachable(TargetError):
    """The target did not answer: a connection refused or reset, a timeout, HTTP 5xx or 429,
    credentials it rejected (they may be refreshed). The same call may work a moment later, so
    the engine retries it within ``onProviderError`` (a plain ``TargetError`` is a refusal that
    retrying does not change: a stuck rollout, an invalid object)."""


class ConflictError(RuntimeError):
    """A compare-and-swap write lost against a concurrent writer; re-read and retry."""


class TelemetryError(RuntimeError):
    """A release event could not be published (the message says where and why)."""


class AlertingError(RuntimeError):
    """Alertmanager did not take a notification or a silence (the message says where, why)."""


@dataclass(frozen=True)
class Unavailable:
    """What a target cannot offer, and why (shown to the operator as it is)."""

    reason: str


@dataclass(frozen=True)
class ReleaseSpec:
    """What is being released."""

    release_id: str
    version: str
    """The version label (image tag); becomes ``version`` on every metric series of the canary."""
    image: str | None = None
    """Full image reference for Kubernetes; ``None`` on the local stack (it runs this checkout)."""


@dataclass(frozen=True)
class TargetState:
    """What is deployed right now."""

    stable_version: str
    stable_image: str | None
    canary_version: str | None
    canary_image: str | None
    canary_replicas: int
    canary_ready_replicas: int
    weight: int
    """Percent of traffic the canary receives now."""


@dataclass(frozen=True)
class HealthProbe:
    """One instance's answer to ``GET /api/health/advanced``."""

    instance: str
    ok: bool
    status_code: int | None
    status: str | None
    """``healthy`` / ``degraded`` / ``unhealthy`` from the body, when there was one."""
    detail: str
    """Why it is not ok (connection refused, HTTP 503, the failing checks...)."""
    track: Track | None = None


@dataclass(frozen=True)
class MigrationResult:
    phase: Phase
    ok: bool
    applied: tuple[str, ...]
    """Migration ids applied by this run (empty when all were already applied)."""
    detail: str


@dataclass(frozen=True)
class Instance:
    """One app instance: a pod on Kubernetes, a process on the local stack."""

    name: str
    track: Track | None
    version: str | None
    ready: bool
    detail: str
    """How it is, in words (``phase Running, ready True`` / ``running, pid 123``)."""
    restarts: int = 0


@dataclass(frozen=True)
class ClusterEvent:
    type: str
    reason: str
    message: str
    object: str


@dataclass(frozen=True)
class JobStatus:
    name: str
    active: int
    succeeded: int
    failed: int
    failed_condition: bool
    """The Job's ``Failed`` condition is true (backoff limit or deadline reached)."""
    condition: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class AdminAnswer:
    instance: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class ReleaseEvent:
    """A release's state as published for alerting (``PortalReleaseAborted``)."""

    stack: str
    release_id: str
    version: str
    status: int
    """0 in progress, 1 promoted, 2 aborted."""
    aborted_at: float | None = None


@dataclass(frozen=True)
class Notification:
    """An alert posted to Alertmanager (a release event): routed to the receivers like one."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float


@dataclass(frozen=True)
class SilenceSpec:
    """Mute ``alerts`` of ``stack`` from ``starts_at`` to ``ends_at`` (unix seconds)."""

    alerts: tuple[str, ...]
    stack: str
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    silence_id: str | None = None
    """Change this silence (its end) instead of creating one."""


class Workloads(Protocol):
    """The stable and canary workloads."""

    def state(self) -> TargetState: ...

    def deploy_canary(self, spec: ReleaseSpec, replicas: int) -> None:
        """The canary runs ``spec`` with ``replicas`` instances, all ready (weight unchanged)."""
        ...

    def promote(self, spec: ReleaseSpec) -> None:
        """Stable runs ``spec`` (all stable instances ready), then weight 0, canary gone."""
        ...

    def rollback(self) -> None:
        """Weight 0, the canary scaled to zero; stable untouched."""
        ...

    def set_stable(self, version: str, image: str | None) -> None:
        """Scripted rollback: stable goes back to ``version`` (all instances ready)."""
        ...

    def replicas(self, track: Track) -> int:
        """How many instances ``track`` is meant to run now."""
        ...

    def scale(self, track: Track, replicas: int) -> None:
        """``track`` runs ``replicas`` instances (of the version it runs)."""
        ...


class TrafficRouter(Protocol):
    """The canary's share of traffic."""

    def set_weight(self, weight: int) -> None:
        """Send ``weight`` percent of traffic to the canary (0..100)."""
        ...

    def weight(self) -> int: ...


class Migrator(Protocol):
    def run(self, spec: ReleaseSpec, phase: Phase) -> MigrationResult:
        """Run the migrations of ``spec``'s version for ``phase`` and wait for them."""
        ...


class LedgerStore(Protocol):
    """Durable storage of the ledger document with compare-and-swap writes.

    Kubernetes: a ConfigMap (the token is its resourceVersion). Local: a JSON file (the token is
    a revision counter kept in the file, swapped under an exclusive lock).
    """

    @property
    def where(self) -> str:
        """Where the document lives, for messages (``ledger /path/ledger.json``)."""
        ...

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        """The document and its token, or ``(None, None)`` when there is none yet."""
        ...

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        """Write ``doc`` if the stored token is still ``token`` (``None``: must not exist yet).
        Returns the new token; raises ``ConflictError`` when someone else wrote in between."""
        ...

    def archive(self, key: str, doc: dict[str, Any]) -> None:
        """Keep ``doc`` (a finished release's whole record) under ``key``, one object per key
        (written again as it is when it exists)."""
        ...

    def archived(self, key: str) -> dict[str, Any] | None:
        """The record archived under ``key``, or ``None``."""
        ...

    def prune(self, keep: set[str]) -> None:
        """Delete every archived record whose key is not in ``keep``."""
        ...


class Telemetry(Protocol):
    """Prometheus (with whatever credentials reaching it takes) and the Pushgateway."""

    @property
    def prometheus(self) -> Prometheus: ...

    @property
    def rate_window(self) -> str:
        """The PromQL rate window that suits this target's scrape interval (``5m``, ``30s``)."""
        ...

    def publish(self, event: ReleaseEvent) -> None:
        """Push the release's state to the Pushgateway; ``TelemetryError`` when it fails."""
        ...

    def dashboard(self, path: str) -> str | Unavailable:
        """How to open Grafana's ``path`` from this machine."""
        ...


class Alerting(Protocol):
    """Alertmanager: release events posted as alerts, silences during planned work. Every call
    is retried a bounded number of times, then raises ``AlertingError``."""

    def notify(self, notifications: Sequence[Notification]) -> None: ...

    def silence(self, spec: SilenceSpec) -> str:
        """Create (or change) a silence; its id (a changed one may get a new id)."""
        ...

    def expire(self, silence_id: str) -> None:
        """End the silence now (one that ended already, or is unknown, is left as it is)."""
        ...

    def silence_state(self, silence_id: str) -> str | None:
        """``active``, ``pending`` or ``expired``; ``None`` when Alertmanager does not know it."""
        ...


class Diagnostics(Protocol):
    """Read-only views for the runbooks (and the engine's health gate)."""

    def instances(self) -> list[Instance]: ...

    def probe(self, track: Track | None = None) -> list[HealthProbe]:
        """``/api/health/advanced`` of every instance (of ``track``); ``TargetError`` when the
        instances cannot even be listed."""
        ...

    def events(self, limit: int) -> list[ClusterEvent] | Unavailable: ...

    def job(self, name: str) -> JobStatus | Unavailable | None:
        """The Job's status; ``None`` when there is no such Job."""
        ...

    def database_url(self) -> str | Unavailable:
        """Where ``python -m app analyze`` reaches the database from here."""
        ...

    def restart_hint(self) -> str | None:
        """How to restart what is down, when the target has its own way."""
        ...


class AppAdmin(Protocol):
    """The service's operational endpoints (``POST /api/admin/...``) on every instance."""

    def call(self, path: str, body: Mapping[str, Any]) -> list[AdminAnswer]: ...


@dataclass(frozen=True)
class Target:
    """One backend's ports: everything the engine, the runbooks and ``portalctl`` drive."""

    name: str
    """``kubernetes:<namespace>`` or ``local``: shown in status and written to the ledger."""
    workloads: Workloads
    router: TrafficRouter
    migrator: Migrator
    ledger: LedgerStore
    telemetry: Telemetry
    diagnostics: Diagnostics
    admin: AppAdmin | Unavailable
    """``Unavailable`` where the service's admin endpoints cannot be called from here."""
    alerting: Alerting
