"""One runbook per alert rule of ``contract.alerts``, with the thresholds of the stack config.

The alert rules, the release gates and these runbooks read the same ``cfg.slo`` and
``cfg.alerts`` values, so "too slow" means one thing everywhere.
"""

from __future__ import annotations

from contract import promql
from contract.config import StackConfig
from contract.prometheus_config import JOB_REDIS
from runbooks.model import (
    WINDOW,
    DbCheck,
    DisableSentry,
    FlushCache,
    KubeRead,
    Panel,
    Probe,
    Query,
    Rollback,
    Runbook,
    Scale,
    Severity,
    Templates,
)

API = "portal-api-performance"
DATA = "portal-database-redis"

FLUSH_PATTERN = "users:list:*"
"""The cache keys a Redis-memory runbook flushes first: list pages are many, big and cheap to
rebuild."""


def _templates(cfg: StackConfig, slug: str, title: str, metric: str, panel: Panel) -> Templates:
    url = cfg.alerts.runbook_url(slug)
    initial = (
        f"🚨 [SEV-?] {title}: investigating\n"
        "📅 Started: [HH:MM] UTC\n"
        "🔍 What we see: [the alert's description, with the measured value]\n"
        "👥 Who is affected: [all users / canary share / none yet]\n"
        "🧑‍🚒 Incident lead: [name]\n"
        f"📊 Dashboard: [Grafana URL]{panel.path}\n"
        f"🔗 Runbook: {url}\n"
        "⏱️ Next update: [HH:MM] UTC (every 5 minutes while it lasts)"
    )
    update = (
        f"[HH:MM UTC] 🟡 {title}: [what we know now]\n"
        f"{metric}: [current value] (threshold [threshold])\n"
        "Done so far: [rollback / cache flush / Sentry off / scaled / nothing yet]\n"
        "Next: [next step] · next update [HH:MM] UTC"
    )
    resolved = (
        f"✅ Resolved: {title}\n"
        "Duration: [HH:MM]-[HH:MM] UTC ([N] minutes)\n"
        "Impact: [requests failed or slowed, users affected]\n"
        "Cause: [cause]\n"
        "What we did: [actions, as recorded in the incident]\n"
        f"{metric} now: [value] (threshold [threshold])\n"
        "Follow-up: [postmortem link] · [tickets]"
    )
    return Templates(initial, update, resolved)


def _error_rate(cfg: StackConfig, by: str, severity: Severity) -> Query:
    return Query(
        title=f"Error rate (5xx share of user requests) by {by}",
        promql=promql.error_ratio_expr(by=by, window=WINDOW),
        op=">",
        threshold=cfg.slo.max_error_rate,
        unit="ratio",
        severity=severity,
        config_key="portal:slo.maxErrorRate",
    )


def _p95(cfg: StackConfig, by: str, severity: Severity) -> Query:
    return Query(
        title=f"p95 request latency by {by}",
        promql=promql.latency_quantile_expr(0.95, by=by, window=WINDOW),
        op=">",
        threshold=cfg.slo.max_p95_ms / 1000,
        unit="seconds",
        severity=severity,
        config_key="portal:slo.maxP95Ms",
    )


def _db_p95(cfg: StackConfig, severity: Severity) -> Query:
    return Query(
        title="p95 database query time by operation, track and version",
        promql=(
            "histogram_quantile(0.95, sum by (operation, track, version, le) "
            f"(rate(db_query_duration_seconds_bucket[{WINDOW}])))"
        ),
        op=">",
        threshold=cfg.alerts.slow_query_ms / 1000,
        unit="seconds",
        severity=severity,
        config_key="portal:alerts.slowQueryMs",
    )


def _cache_hit_rate(cfg: StackConfig) -> Query:
    hits = f"sum by (track) (rate(cache_hits_total[{WINDOW}]))"
    misses = f"sum by (track) (rate(cache_misses_total[{WINDOW}]))"
    return Query(
        title="Cache hit rate by track",
        promql=f"{hits} / ({hits} + {misses})",
        op="<",
        threshold=cfg.alerts.cache_hit_rate_min,
        unit="ratio",
        severity="warning",
        config_key="portal:alerts.cacheHitRateMin",
    )


def _redis_errors(severity: Severity) -> Query:
    return Query(
        title="Failed Redis round trips per second by operation",
        promql=(f'sum by (operation) (rate(redis_operations_total{{status="error"}}[{WINDOW}]))'),
        op=">",
        threshold=0,
        unit="count",
        severity=severity,
    )


def runbooks(cfg: StackConfig) -> list[Runbook]:
    """Every runbook, in the order of ``contract.alerts.alerts(cfg)``."""
    a = cfg.alerts
    n = cfg.names
    ns = cfg.namespace
    book: list[Runbook] = []

    def add(rb: Runbook) -> None:
        book.append(rb)

    panel = Panel(API, 15, "Error rate by track")
    add(
        Runbook(
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
                _error_rate(cfg, "track, version", "critical"),
                _error_rate(cfg, "route", "warning"),
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
            templates=_templates(cfg, "high-error-rate", "Portal errors", "Error rate", panel),
            panel=panel,
            human=(
                "Read the failing route's logs and traces (Jaeger) to find the cause before "
                "releasing again.",
            ),
        )
    )

    panel = Panel(API, 10, "p95 latency: canary vs stable")
    add(
        Runbook(
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
                _p95(cfg, "track, version", "warning"),
                _p95(cfg, "route", "warning"),
                _db_p95(cfg, "warning"),
                _cache_hit_rate(cfg),
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
            templates=_templates(cfg, "high-latency", "Portal is slow", "p95 latency", panel),
            panel=panel,
            human=("Find the slow span in Jaeger for the slowest route.",),
        )
    )

    panel = Panel(API, 18, "Cache hit rate by TTL class")
    add(
        Runbook(
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
                _cache_hit_rate(cfg),
                _redis_errors("warning"),
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
            templates=_templates(
                cfg, "low-cache-hit-rate", "Portal cache misses", "Cache hit rate", panel
            ),
            panel=panel,
        )
    )

    panel = Panel(API, 21, "DB query p95 by operation")
    add(
        Runbook(
            slug="slow-queries",
            alert="PortalSlowQueries",
            title="Slow database queries",
            severity="warning",
            meaning=(
                "The p95 duration of one kind of SQL statement is above "
                "`portal:alerts.slowQueryMs`."
            ),
            impact=(
                "Requests that run the statement are slow; connections are held longer, so the "
                "pool can run out."
            ),
            diagnosis=(
                _db_p95(cfg, "warning"),
                _p95(cfg, "route", "warning"),
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
            templates=_templates(cfg, "slow-queries", "Portal database slow", "Query p95", panel),
            panel=panel,
            human=("Run EXPLAIN (ANALYZE) on the slow statement the analysis names.",),
        )
    )

    panel = Panel(DATA, 3, "Connection saturation")
    add(
        Runbook(
            slug="postgres-connections",
            alert="PostgresConnectionSaturation",
            title="Postgres connections near max_connections",
            severity="critical",
            meaning=(
                "The share of Postgres `max_connections` in use is above "
                "`portal:alerts.pgConnectionsMaxRatio`."
            ),
            impact=(
                "New connections are refused once the limit is reached: requests fail with 5xx "
                "and migrations cannot start."
            ),
            diagnosis=(
                Query(
                    title="Connections in use / max_connections by instance",
                    promql=(
                        "sum by (instance) (pg_stat_activity_count) / max by (instance) "
                        "(pg_settings_max_connections)"
                    ),
                    op=">",
                    threshold=a.pg_connections_max_ratio,
                    unit="ratio",
                    severity="critical",
                    config_key="portal:alerts.pgConnectionsMaxRatio",
                ),
                Probe("Database check of every app instance", "critical", check="database"),
                DbCheck(
                    "Database analysis (slow statements hold connections)",
                    a.slow_query_ms,
                    "warning",
                ),
            ),
            remediation=(
                "A canary is running: roll it back (each instance holds its own pool).",
                "Slow statements hold connections: follow slow-queries.",
                "Otherwise lower `PORTAL_DB_POOL_SIZE` or the replica count, or raise "
                "`max_connections` (restarts Postgres: plan it).",
            ),
            actions=(Rollback(),),
            escalation=("Connections refused: page the database owner now.",),
            templates=_templates(
                cfg, "postgres-connections", "Postgres connections", "Connections used", panel
            ),
            panel=panel,
            human=("Look for idle-in-transaction sessions in pg_stat_activity.",),
        )
    )

    panel = Panel(DATA, 13, "Redis up")
    add(
        Runbook(
            slug="redis-down",
            alert="RedisDown",
            title="Redis down",
            severity="critical",
            meaning=("Redis does not answer (`redis_up` is 0, or its exporter cannot be scraped)."),
            impact=(
                "The portal keeps serving from each instance's in-process cache (health reports "
                "`degraded`), so every instance has a colder, separate cache: more database load "
                "and higher latency; cache invalidation across instances is lost."
            ),
            diagnosis=(
                Query(
                    title="Redis answers its exporter",
                    breach="Redis is down",
                    promql="min by (instance) (redis_up)",
                    op="<",
                    threshold=1,
                    unit="count",
                    severity="critical",
                ),
                Query(
                    title="Redis exporter scrape is up",
                    breach="the Redis exporter cannot be scraped",
                    promql=f'min by (instance) (up{{job="{JOB_REDIS}"}})',
                    op="<",
                    threshold=1,
                    unit="count",
                    severity="critical",
                ),
                Probe("Cache check of every app instance", "critical", check="cache"),
                _redis_errors("warning"),
                KubeRead("Redis pods and recent events", "events", "warning"),
            ),
            remediation=(
                f"Restart Redis: `kubectl -n {ns} rollout restart statefulset/{n.redis}`; the "
                "app reconnects by itself (health goes back to `healthy`).",
                "If it does not start: read its events and logs (out of memory, full volume).",
                "Do not roll back the app: it is not the cause and serves degraded meanwhile.",
            ),
            actions=(),
            escalation=("Redis not back in 10 minutes: page the on-call manager.",),
            templates=_templates(cfg, "redis-down", "Redis down", "Redis up", panel),
            panel=panel,
            human=(
                f"Restart Redis (`kubectl -n {ns} rollout restart statefulset/{n.redis}`) and "
                "watch the cache check go back to healthy.",
            ),
        )
    )

    panel = Panel(DATA, 14, "Memory used of maxmemory")
    add(
        Runbook(
            slug="redis-memory",
            alert="RedisMemoryHigh",
            title="Redis memory near maxmemory",
            severity="warning",
            meaning=(
                "Redis uses more than `portal:alerts.redisMemoryMaxRatio` of its maxmemory "
                "(`portal:redis.maxMemory`) and evicts keys."
            ),
            impact="Evictions lower the cache hit rate; the database does more work.",
            diagnosis=(
                Query(
                    title="Redis memory used / maxmemory",
                    promql="redis_memory_used_bytes / (redis_memory_max_bytes > 0)",
                    op=">",
                    threshold=a.redis_memory_max_ratio,
                    unit="ratio",
                    severity="warning",
                    config_key="portal:alerts.redisMemoryMaxRatio",
                ),
                Query(
                    title="Keys evicted per second",
                    promql=f"sum by (instance) (rate(redis_evicted_keys_total[{WINDOW}]))",
                    op=">",
                    threshold=0,
                    unit="count",
                    severity="warning",
                ),
                _cache_hit_rate(cfg),
            ),
            remediation=(
                f"Flush the biggest, cheapest-to-rebuild keys (`{FLUSH_PATTERN}`) to make room.",
                "Raise `portal:redis.maxMemory` (and the pod's memory limit) if it fills again.",
            ),
            actions=(FlushCache(FLUSH_PATTERN),),
            escalation=("Evicting continuously after a flush: the service owner.",),
            templates=_templates(cfg, "redis-memory", "Redis memory", "Redis memory used", panel),
            panel=panel,
        )
    )

    panel = Panel(API, 14, "Request rate by track and version")
    add(
        Runbook(
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
            templates=_templates(
                cfg, "instances-not-ready", "Portal instances down", "Ready instances", panel
            ),
            panel=panel,
        )
    )

    panel = Panel(API, 21, "DB query p95 by operation")
    add(
        Runbook(
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
                DbCheck(
                    "Database analysis (INVALID indexes left behind)", a.slow_query_ms, "warning"
                ),
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
            templates=_templates(cfg, "migration-failed", "Migration failed", "Failed Jobs", panel),
            panel=panel,
            human=("Read the migration Job's logs and fix the migration.",),
        )
    )

    panel = Panel(API, 15, "Error rate by track")
    add(
        Runbook(
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
                _error_rate(cfg, "track, version", "warning"),
                _p95(cfg, "track, version", "warning"),
                Probe("Health of every app instance", "warning"),
            ),
            remediation=(
                "Confirm the canary is gone and stable is healthy (the diagnosis above).",
                "Reproduce the failing check with the version's fault (the recorded query).",
                "Fix and release again; nothing to undo on stable.",
            ),
            actions=(Rollback(),),
            escalation=("Stable is unhealthy too: follow high-error-rate.",),
            templates=_templates(
                cfg, "release-aborted", "Release aborted", "Canary error rate", panel
            ),
            panel=panel,
            human=("Find why the version failed its gate before releasing it again.",),
        )
    )
    return book


def by_slug(cfg: StackConfig) -> dict[str, Runbook]:
    return {rb.slug: rb for rb in runbooks(cfg)}
