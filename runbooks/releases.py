"""Runbooks of the release alerts: a failed migration Job, an aborted release."""

from __future__ import annotations

from contract.config import StackConfig
from contract.panels import ALERT_PANELS
from runbooks.common import (
    error_rate_query,
    p95_query,
    templates,
)
from runbooks.model import (
    DbCheck,
    KubeRead,
    Probe,
    Query,
    Rollback,
    Runbook,
)


def migration_failed(cfg: StackConfig) -> Runbook:
    a = cfg.alerts
    n = cfg.names
    ns = cfg.namespace
    panel = ALERT_PANELS["PortalMigrationJobFailed"]
    return Runbook(
        slug="migration-failed",
        alert="PortalMigrationJobFailed",
        title="Migration Job failed",
        severity="critical",
        meaning=(
            f"A `{n.migration_job_prefix}*` Job hit its backoffLimit or deadline. The app "
            "Deployments were not updated (the release stops before the canary)."
        ),
        impact=(
            "The release is blocked. A failed `CREATE INDEX CONCURRENTLY` can leave an "
            "INVALID index that slows writes until it is dropped."
        ),
        diagnosis=(
            KubeRead(
                "Migration Job status",
                "job_status",
                "critical",
                job_prefix=n.migration_job_prefix,
            ),
            KubeRead("Recent events", "events", "warning"),
            DbCheck("Database analysis (INVALID indexes left behind)", a.slow_query_ms, "warning"),
            Query(
                title="Failed migration Jobs",
                promql=(
                    "max by (job_name) (kube_job_failed"
                    f'{{namespace="{ns}",job_name=~"{n.migration_job_prefix}.*",'
                    'condition="true"})'
                ),
                op=">",
                threshold=0,
                unit="count",
                severity="critical",
            ),
        ),
        remediation=(
            "Read the Job's logs: `kubectl -n NS logs job/<name>` (the runner prints the "
            "migration that failed and what it applied before).",
            "Make sure no canary of the blocked release is running (roll it back).",
            "Fix the migration and release again; the runner skips what was applied and "
            "rebuilds INVALID indexes.",
        ),
        actions=(Rollback(),),
        escalation=("Data changed by a half-applied migration: the database owner.",),
        templates=templates(cfg, "migration-failed", "Migration failed", "Failed Jobs", panel),
        panel=panel,
        human=("Read the migration Job's logs and fix the migration.",),
    )


def release_aborted(cfg: StackConfig) -> Runbook:
    panel = ALERT_PANELS["PortalReleaseAborted"]
    return Runbook(
        slug="release-aborted",
        alert="PortalReleaseAborted",
        title="Release aborted",
        severity="warning",
        meaning=(
            "The release engine rolled a canary back: a gate failed (error rate, p95 "
            "latency, health) or someone aborted. Its incident record in the release ledger "
            "names the gate, the check, the query and the values; `portalctl runbook run "
            "release-aborted` starts from that record."
        ),
        impact=(
            "The canary's share of users saw the failure while it ran; stable was not "
            "changed. The new version is not released."
        ),
        diagnosis=(
            error_rate_query(cfg, "track, version", "warning"),
            p95_query(cfg, "track, version", "warning"),
            Probe("Health of every app instance", "warning"),
        ),
        remediation=(
            "Confirm the canary is gone and stable is healthy (the diagnosis above).",
            "Reproduce the failing check with the version's fault (the recorded query).",
            "Fix and release again; nothing to undo on stable.",
        ),
        actions=(Rollback(),),
        escalation=("Stable is unhealthy too: follow high-error-rate.",),
        templates=templates(cfg, "release-aborted", "Release aborted", "Canary error rate", panel),
        panel=panel,
        human=("Find why the version failed its gate before releasing it again.",),
    )
