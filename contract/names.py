"""The Kubernetes names the components create and ``portalctl`` and the runbooks use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NAMESPACE = "portal"
"""The Pulumi config namespace: keys are written ``portal:<key>`` in the stack files."""

Phase = Literal["expand", "contract"]
"""A migration phase: ``expand`` before a release, ``contract`` once no older version runs."""


@dataclass(frozen=True)
class Names:
    """Object names of one stack (they do not vary between stacks: the namespace does)."""

    app: str = "portal"
    postgres: str = "postgres"
    redis: str = "redis"
    prometheus: str = "prometheus"
    grafana: str = "grafana"
    jaeger: str = "jaeger"
    container: str = "portal"
    """Name of the service container inside stable and canary pods."""
    prometheus_port: int = 9090
    pushgateway: str = "pushgateway"
    """Service of the Pushgateway to which ``portalctl`` pushes release events."""
    pushgateway_port: int = 9091
    kube_state_metrics: str = "kube-state-metrics"
    alertmanager: str = "alertmanager"
    """Service of Alertmanager: Prometheus sends it alerts, ``portalctl`` release events and
    silences."""
    alertmanager_port: int = 9093

    @property
    def stable(self) -> str:
        return f"{self.app}-stable"

    @property
    def canary(self) -> str:
        return f"{self.app}-canary"

    @property
    def ingress(self) -> str:
        return self.app

    @property
    def canary_ingress(self) -> str:
        return f"{self.app}-canary"

    @property
    def ledger(self) -> str:
        return f"{self.app}-releases"

    @property
    def app_secret(self) -> str:
        return f"{self.app}-env"

    @property
    def postgres_secret(self) -> str:
        """The Secret with the database's user, password and name (``*_KEY`` below)."""
        return f"{self.postgres}-auth"

    @property
    def scrape_secret(self) -> str:
        """The Secret with the token Prometheus presents when it scrapes the service."""
        return f"{self.prometheus}-scrape"

    @property
    def postgres_roles(self) -> str:
        """The Job (and its ConfigMap and Secret) that creates the database's roles."""
        return f"{self.postgres}-roles"

    @property
    def migrate_secret(self) -> str:
        """The Secret of the migration Job: the migration role's database URL and password."""
        return f"{self.app}-migrate"

    @property
    def redis_secret(self) -> str:
        """The Secret with Redis's ACL file and its users' passwords."""
        return f"{self.redis}-auth"

    @property
    def migration_job_prefix(self) -> str:
        """Every migration Job's name starts with this (the alert rules match on it)."""
        return f"{self.app}-migrate-"

    def migration_job(self, version: str, phase: Phase = "expand") -> str:
        """One Job per app version and phase, so a new release runs a new Job."""
        slug = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")
        suffix = "" if phase == "expand" else f"-{phase}"
        return f"{self.migration_job_prefix}{slug}"[: 63 - len(suffix)].rstrip("-") + suffix


NAMES = Names()

DATABASE_URL = "PORTAL_DATABASE_URL"
"""Key of the app Secret (and env variable of the app and the migration Job)."""
REDIS_URL = "PORTAL_REDIS_URL"
SENTRY_DSN = "SENTRY_DSN"
AUTH_KEYS = "PORTAL_AUTH_KEYS"
"""Key of the app Secret holding the JWK Set of the API's token keys (a file: ``<KEY>_FILE``)."""
METRICS_TOKEN = "PORTAL_METRICS_TOKEN"  # noqa: S105 - a key name
"""Key of the app Secret holding the token Prometheus scrapes with (a file: ``<KEY>_FILE``)."""
SECRETS_DIR = "/var/run/secrets/portal"
"""Where a pod finds its Secret's keys as files (``<dir>/<KEY>``; ``<KEY>_FILE`` points there)."""
SCRAPE_TOKEN_KEY = "token"  # noqa: S105 - a key name
"""Key of the scrape Secret (``Names.scrape_secret``) mounted into Prometheus."""

PG_MIGRATOR = "portal_migrator"
"""Owns the schema: the migration Job and the pre-migration backup."""
PG_APP = "portal_app"
"""The service: SELECT, INSERT, UPDATE and DELETE on the schema's tables; no DDL."""
PG_READONLY = "portal_readonly"
"""The exporter and ``python -m app analyze``: SELECT and the statistics views (pg_monitor)."""
PG_ROLES = (PG_MIGRATOR, PG_APP, PG_READONLY)

REDIS_APP_USER = "portal_app"
"""Redis ACL user of the service: its key patterns and data commands only."""
REDIS_EXPORTER_USER = "portal_exporter"
"""Redis ACL user of the exporter and the probes: INFO, CONFIG GET and reads of metadata."""

POSTGRES_USER_KEY = "POSTGRES_USER"
POSTGRES_PASSWORD_KEY = "POSTGRES_PASSWORD"  # noqa: S105 - a key name
POSTGRES_DATABASE_KEY = "POSTGRES_DB"

ALERT_RUNBOOKS: dict[str, str] = {
    "PortalHighErrorRate": "high-error-rate",
    "PortalHighLatency": "high-latency",
    "PortalLowCacheHitRate": "low-cache-hit-rate",
    "PortalSlowQueries": "slow-queries",
    "PostgresConnectionSaturation": "postgres-connections",
    "RedisDown": "redis-down",
    "RedisMemoryHigh": "redis-memory",
    "PortalInstancesNotReady": "instances-not-ready",
    "PortalMigrationJobFailed": "migration-failed",
    "PortalReleaseAborted": "release-aborted",
}
"""Alert name -> runbook slug (``runbooks/<slug>.md``): every alert rule of a stack, in runbook
order. The runbooks, the silences ``portalctl`` creates and the config model rely on these
names."""
