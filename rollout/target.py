"""The interface between the release engine and what it drives.

One engine, two targets: ``KubernetesTarget`` (patches Deployments and the canary Ingress through
the Kubernetes API) and ``LocalTarget`` (app processes behind nginx on this machine). The engine
only ever calls the methods below, so it does not know which one it drives.

Every method that changes something is idempotent: the engine writes a transition to the ledger
before acting on it and, after a crash, performs the last unfinished transition again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Phase = Literal["expand", "contract"]


class TargetError(RuntimeError):
    """The target could not do what was asked (timeout, API error); the message says what."""


class ConflictError(RuntimeError):
    """A compare-and-swap write lost against a concurrent writer; re-read and retry."""


@dataclass(frozen=True)
class ReleaseSpec:
    """What is being released."""

    release_id: str
    version: str
    """The version label (image tag); becomes ``version`` on every metric series of the canary."""
    image: str | None = None
    """Full image reference for Kubernetes; ``None`` on the local target."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for the canary (local drills use it for the fault switch)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "version": self.version,
            "image": self.image,
            "env": dict(self.env),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReleaseSpec:
        return cls(
            release_id=str(d["release_id"]),
            version=str(d["version"]),
            image=d.get("image"),
            env=dict(d.get("env") or {}),
        )


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
    """One canary instance's answer to ``GET /api/health/advanced``."""

    instance: str
    ok: bool
    status_code: int | None
    status: str | None
    """``healthy`` / ``degraded`` / ``unhealthy`` from the body, when there was one."""
    detail: str
    """Why it is not ok (connection refused, HTTP 503, the failing checks...)."""


@dataclass(frozen=True)
class MigrationResult:
    phase: Phase
    ok: bool
    applied: tuple[str, ...]
    """Migration ids applied by this run (empty when all were already applied)."""
    detail: str


@runtime_checkable
class LedgerStore(Protocol):
    """Durable storage of the ledger document with compare-and-swap writes.

    Kubernetes: a ConfigMap (the token is its resourceVersion). Local: a JSON file (the token is
    a revision counter kept in the file, swapped under an exclusive lock).
    """

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        """The document and its token, or ``(None, None)`` when there is none yet."""
        ...

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        """Write ``doc`` if the stored token is still ``token`` (``None``: must not exist yet).

        Returns the new token; raises ``ConflictError`` when someone else wrote in between.
        """
        ...


@runtime_checkable
class Target(Protocol):
    """What the release engine drives."""

    @property
    def name(self) -> str:
        """``kubernetes:<namespace>`` or ``local``: shown in status and written to the ledger."""
        ...

    @property
    def prometheus_url(self) -> str:
        """Base URL of the Prometheus HTTP API that scrapes both tracks."""
        ...

    def ledger(self) -> LedgerStore: ...

    def state(self) -> TargetState: ...

    def run_migrations(self, spec: ReleaseSpec, phase: Phase) -> MigrationResult:
        """Run the migration runner of ``spec``'s version for ``phase`` and wait for it."""
        ...

    def deploy_canary(self, spec: ReleaseSpec, replicas: int) -> None:
        """The canary runs ``spec`` with ``replicas`` instances, all ready (weight unchanged)."""
        ...

    def set_weight(self, weight: int) -> None:
        """Send ``weight`` percent of traffic to the canary (0..100)."""
        ...

    def probe_canary(self) -> list[HealthProbe]:
        """Health of every canary instance; an empty list means no canary instance exists."""
        ...

    def promote(self, spec: ReleaseSpec) -> None:
        """Stable runs ``spec`` (all stable instances ready), then weight 0, canary scaled to 0."""
        ...

    def rollback(self) -> None:
        """Weight 0, canary scaled to zero; stable untouched."""
        ...

    def set_stable(self, version: str, image: str | None) -> None:
        """Scripted rollback: stable goes back to ``version`` (all instances ready)."""
        ...
