"""Labels and annotations the components write and ``portalctl`` reads.

Every object carries the standard ``app.kubernetes.io/*`` labels. Selectors use ``name`` and
``component`` only (plus ``portal.dev/track`` for the app): labels that never change for the
life of a workload, unlike ``version``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from contract.config import StackConfig

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
VERSION = "app.kubernetes.io/version"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
TRACK = "portal.dev/track"

# app.kubernetes.io/component of each workload.
API = "api"
MIGRATION = "migration"
DATABASE = "database"
ROLES = "roles"
"""The Job that creates the database's roles (``name`` postgres)."""
CACHE = "cache"
MONITORING = "monitoring"
DASHBOARDS = "dashboards"
TRACING = "tracing"
CLUSTER_METRICS = "cluster-metrics"
RELEASE_EVENTS = "release-events"
ALERTING = "alerting"
LEDGER = "ledger"
LEDGER_ARCHIVE = "ledger-archive"

ManagedBy = Literal["pulumi", "portalctl"]
PULUMI: ManagedBy = "pulumi"
PORTALCTL: ManagedBy = "portalctl"

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, Track] = ("stable", "canary")

CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
"""ingress-nginx's canary Ingress annotations: the release engine writes the weight."""


def selector(name: str, component: str) -> dict[str, str]:
    """The labels a workload's selector and the NetworkPolicies match on."""
    return {NAME: name, COMPONENT: component}


def app_selector(cfg: StackConfig, track: Track | None = None) -> dict[str, str]:
    """The labels of the app's pods (of one track)."""
    labels = selector(cfg.names.app, API)
    if track is not None:
        labels[TRACK] = track
    return labels


def standard_labels(
    cfg: StackConfig,
    name: str,
    component: str,
    version: str | None,
    managed_by: ManagedBy = PULUMI,
) -> dict[str, str]:
    """The standard labels every object carries; ``version`` only where the object is of one
    version. The portal service's objects that outlive its releases (namespace, Secret, Services,
    Ingresses, autoscaler, disruption budget, the Deployments themselves) pass None: the release
    engine moves the version on the pods alone, without Pulumi, and a label naming the version
    Pulumi last saw would be stale after every release (and a diff for every ``pulumi up``)."""
    labels = {
        **selector(name, component),
        INSTANCE: cfg.environment,
        PART_OF: cfg.names.app,
        MANAGED_BY: managed_by,
    }
    if version is not None:
        labels[VERSION] = version
    return labels


def label_selector(labels: Mapping[str, str]) -> str:
    """``labels`` as the Kubernetes API's ``labelSelector`` (``a=b,c=d``)."""
    return ",".join(f"{k}={v}" for k, v in labels.items())
