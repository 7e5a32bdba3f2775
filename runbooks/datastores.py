"""Runbooks of the datastores' alerts: Postgres connections, Redis down, Redis memory."""

from __future__ import annotations

from contract.config import StackConfig
from contract.panels import ALERT_PANELS
from contract.prometheus_config import JOB_REDIS
from runbooks.common import (
    FLUSH_PATTERN,
    cache_hit_rate_query,
    redis_errors_query,
    templates,
)
from runbooks.model import (
    WINDOW,
    DbCheck,
    FlushCache,
    KubeRead,
    Probe,
    Query,
    Rollback,
    Runbook,
)


def postgres_connections(cfg: StackConfig) -> Runbook:
    a = cfg.alerts
    panel = ALERT_PANELS["PostgresConnectionSaturation"]
    return Runbook(
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
        templates=templates(
            cfg, "postgres-connections", "Postgres connections", "Connections used", panel
        ),
        panel=panel,
        human=("Look for idle-in-transaction sessions in pg_stat_activity.",),
    )


def redis_down(cfg: StackConfig) -> Runbook:
    n = cfg.names
    ns = cfg.namespace
    panel = ALERT_PANELS["RedisDown"]
    return Runbook(
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
            redis_errors_query("warning"),
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
        templates=templates(cfg, "redis-down", "Redis down", "Redis up", panel),
        panel=panel,
        human=(
            f"Restart Redis (`kubectl -n {ns} rollout restart statefulset/{n.redis}`) and "
            "watch the cache check go back to healthy.",
        ),
    )


def redis_memory(cfg: StackConfig) -> Runbook:
    a = cfg.alerts
    panel = ALERT_PANELS["RedisMemoryHigh"]
    return Runbook(
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
            cache_hit_rate_query(cfg),
        ),
        remediation=(
            f"Flush the biggest, cheapest-to-rebuild keys (`{FLUSH_PATTERN}`) to make room.",
            "Raise `portal:redis.maxMemory` (and the pod's memory limit) if it fills again.",
        ),
        actions=(FlushCache(FLUSH_PATTERN),),
        escalation=("Evicting continuously after a flush: the service owner.",),
        templates=templates(cfg, "redis-memory", "Redis memory", "Redis memory used", panel),
        panel=panel,
    )
