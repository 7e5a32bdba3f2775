"""Runbooks of the service's own alerts: errors, latency, cache, queries, instances."""

from __future__ import annotations

from contract.config import StackConfig
from contract.panels import ALERT_PANELS
from runbooks.common import (
    cache_hit_rate_query,
    db_p95_query,
    error_rate_query,
    p95_query,
    redis_errors_query,
    templates,
)
from runbooks.model import (
    DbCheck,
    DisableSentry,
    KubeRead,
    Probe,
    Query,
    Rollback,
    Runbook,
    Scale,
)


def high_error_rate(cfg: StackConfig) -> Runbook:
    panel = ALERT_PANELS["PortalHighErrorRate"]
    return Runbook(
        slug="high-error-rate",
        alert="PortalHighErrorRate",
        title="High error rate",
        severity="critical",
        meaning=(
            "More user requests than the SLO allows (`portal:slo.maxErrorRate`) are answered "
            "with a 5xx on one track (stable or canary), over the alert's 5-minute window. The "
            "release gates use the same limit, so a canary this bad is rolled back by the "
            "engine; an alert means the stable track is failing, or a canary is running "
            "outside a release."
        ),
        impact=(
            "Users get errors on pages and API calls. On the canary track only the canary's "
            "share of traffic is hit; on stable, everyone."
        ),
        diagnosis=(
            error_rate_query(cfg, "track, version", "critical"),
            error_rate_query(cfg, "route", "warning"),
            Probe("Health of every app instance", "critical"),
            KubeRead("App pods (restarts, readiness)", "pods", "warning"),
        ),
        remediation=(
            "If the canary's error rate is the high one: roll the canary back (the runnable "
            "action below does it through the release engine when a release is in flight).",
            "If stable fails and a health check names a dependency (database, cache), follow "
            "that dependency's runbook (postgres-connections, redis-down).",
            "If stable started failing after a promotion: `portalctl rollback --stack S` "
            "(scripted rollback to the last known-good release).",
            "If error reporting itself is the problem (Sentry timeouts in the traces), switch "
            "Sentry off at runtime.",
        ),
        actions=(Rollback(), DisableSentry()),
        escalation=(
            "Not back under the SLO 15 minutes after a rollback: page the on-call manager.",
            "Stable failing with no release in the last hour: on-call manager, then the "
            "service owner.",
        ),
        templates=templates(cfg, "high-error-rate", "Portal errors", "Error rate", panel),
        panel=panel,
        human=(
            "Read the failing route's logs and traces (Jaeger) to find the cause before "
            "releasing again.",
        ),
    )


def high_latency(cfg: StackConfig) -> Runbook:
    panel = ALERT_PANELS["PortalHighLatency"]
    return Runbook(
        slug="high-latency",
        alert="PortalHighLatency",
        title="High p95 latency",
        severity="warning",
        meaning=(
            "The 95th percentile of user-request latency on one track is above "
            "`portal:slo.maxP95Ms`, the same limit the release gates use."
        ),
        impact="One request in twenty (or more) is slower than the SLO; pages feel slow.",
        diagnosis=(
            p95_query(cfg, "track, version", "warning"),
            p95_query(cfg, "route", "warning"),
            db_p95_query(cfg, "warning"),
            cache_hit_rate_query(cfg),
            Probe("Health of every app instance", "warning"),
        ),
        remediation=(
            "Slow on the canary only: roll the canary back.",
            "Database queries slow too: follow slow-queries.",
            "Cache hit rate low too: follow low-cache-hit-rate.",
            "Everything slow under more traffic than usual: scale the stable Deployment up.",
        ),
        actions=(Rollback(), Scale("stable", 1)),
        escalation=("p95 above twice the SLO for 15 minutes: page the on-call manager.",),
        templates=templates(cfg, "high-latency", "Portal is slow", "p95 latency", panel),
        panel=panel,
        human=("Find the slow span in Jaeger for the slowest route.",),
    )


def low_cache_hit_rate(cfg: StackConfig) -> Runbook:
    panel = ALERT_PANELS["PortalLowCacheHitRate"]
    return Runbook(
        slug="low-cache-hit-rate",
        alert="PortalLowCacheHitRate",
        title="Low cache hit rate",
        severity="warning",
        meaning=(
            "Fewer cache lookups than `portal:alerts.cacheHitRateMin` are hits: the database "
            "does work the cache should save."
        ),
        impact=(
            "More database load and higher latency; if it goes on, Postgres connections and "
            "query times follow."
        ),
        diagnosis=(
            cache_hit_rate_query(cfg),
            redis_errors_query("warning"),
            Probe("Cache check of every app instance", "warning", check="cache"),
        ),
        remediation=(
            "Redis errors or a degraded cache check: follow redis-down or redis-memory.",
            "Only the canary's hit rate is low (a key or TTL change): roll the canary back.",
            "Right after a flush or a restart the cache refills by itself within a few "
            "minutes of traffic.",
        ),
        actions=(Rollback(),),
        escalation=("Below the threshold for an hour: the service owner.",),
        templates=templates(
            cfg, "low-cache-hit-rate", "Portal cache misses", "Cache hit rate", panel
        ),
        panel=panel,
    )


def slow_queries(cfg: StackConfig) -> Runbook:
    a = cfg.alerts
    panel = ALERT_PANELS["PortalSlowQueries"]
    return Runbook(
        slug="slow-queries",
        alert="PortalSlowQueries",
        title="Slow database queries",
        severity="warning",
        meaning=(
            "The p95 duration of one kind of SQL statement is above `portal:alerts.slowQueryMs`."
        ),
        impact=(
            "Requests that run the statement are slow; connections are held longer, so the "
            "pool can run out."
        ),
        diagnosis=(
            db_p95_query(cfg, "warning"),
            p95_query(cfg, "route", "warning"),
            DbCheck(
                "Database analysis (slow statements, indexes, scans)",
                a.slow_query_ms,
                "warning",
            ),
        ),
        remediation=(
            "Slow on the canary only (a new query or a missing index): roll the canary back.",
            "An INVALID index in the analysis: a `CREATE INDEX CONCURRENTLY` failed; drop "
            "and recreate it (the migration runner does that on its next run).",
            "Sequential scans on a large table: add the index the analysis recommends, in "
            "a migration.",
        ),
        actions=(Rollback(),),
        escalation=("Database CPU or I/O saturated: the database owner.",),
        templates=templates(cfg, "slow-queries", "Portal database slow", "Query p95", panel),
        panel=panel,
        human=("Run EXPLAIN (ANALYZE) on the slow statement the analysis names.",),
    )


def instances_not_ready(cfg: StackConfig) -> Runbook:
    n = cfg.names
    ns = cfg.namespace
    panel = ALERT_PANELS["PortalInstancesNotReady"]
    return Runbook(
        slug="instances-not-ready",
        alert="PortalInstancesNotReady",
        title="App instances not ready",
        severity="warning",
        meaning=(
            f"Pods of {n.stable} or {n.canary} have been unavailable for `portal:alerts.for`."
        ),
        impact=("Less capacity; if every pod of stable is down, the portal is down."),
        diagnosis=(
            Query(
                title="Unavailable replicas by Deployment",
                promql=(
                    "sum by (deployment) (kube_deployment_status_replicas_unavailable"
                    f'{{namespace="{ns}",deployment=~"{n.stable}|{n.canary}"}})'
                ),
                op=">",
                threshold=0,
                unit="count",
                severity="warning",
            ),
            KubeRead("App pods (phase, readiness, restarts)", "pods", "critical"),
            KubeRead("Recent events", "events", "warning"),
            Probe("Health of every app instance", "critical"),
        ),
        remediation=(
            "Canary pods not ready: roll the canary back.",
            "Stable pods crash-looping after a promotion: `portalctl rollback --stack S`.",
            "Pods pending (no room on the nodes): scale stable up elsewhere or add nodes.",
            "Readiness failing on a dependency: follow that dependency's runbook.",
        ),
        actions=(Rollback(), Scale("stable", 1)),
        escalation=("No stable pod ready: page the on-call manager now.",),
        templates=templates(
            cfg, "instances-not-ready", "Portal instances down", "Ready instances", panel
        ),
        panel=panel,
    )
