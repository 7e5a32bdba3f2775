"""The Prometheus alert rules of a stack, generated from the config model.

A pure function of the config (no Pulumi import), so the deployed rules, the local stack and the
runbooks load the same rules. The thresholds are the ones the release gates read: ``cfg.slo``
defines "too many errors" and "too slow" for both, ``cfg.alerts`` the rest.

Every rule carries ``severity`` and ``runbook`` (the runbook's slug) labels and ``summary``,
``description`` (with the measured value), ``value`` (the measured value alone, formatted),
``runbook_url`` and ``dashboard_url`` (the Grafana panel) annotations: what a notification shows.
The service alerts keep the ``version`` label, so an aborted release (``PortalReleaseAborted``,
which has it too) can inhibit the canary alerts it caused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

from contract.config import StackConfig, parse_duration
from contract.names import ALERT_RUNBOOKS
from contract.panels import ALERT_PANELS, Panel
from contract.prometheus_config import JOB_REDIS
from contract.promql import (
    RELEASE_ABORTED,
    RELEASE_JOB,
    WINDOW,
    error_ratio_expr,
    latency_quantile_expr,
    number,
)

RUNBOOKS = ALERT_RUNBOOKS
"""Alert name -> runbook slug (``runbooks/<slug>.md``)."""

RELEASE_ABORTED_WINDOW_S = 3600
"""PortalReleaseAborted fires for this long after an abort (then resolves by itself)."""

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class Alert:
    name: str
    severity: Severity
    expr: str
    for_: str | None
    """How long the condition must hold; ``None`` fires at the first evaluation."""
    summary: str
    description: str
    """Alertmanager template text; includes the measured ``$value``."""
    value: str = "{{ $value }}"
    """The measured value as people read it (``{{ $value | humanizePercentage }}``)."""

    @property
    def slug(self) -> str:
        return RUNBOOKS[self.name]

    @property
    def panel(self) -> Panel:
        return ALERT_PANELS[self.name]


def alerts(cfg: StackConfig) -> list[Alert]:
    """Every alert of the stack, in runbook order."""
    return [*_service(cfg), *_datastores(cfg), *_workloads(cfg)]


PERCENT = "{{ $value | humanizePercentage }}"
DURATION = "{{ $value | humanizeDuration }}"
BY_TRACK = "track, version"
"""The service alerts fire per track and version (``version`` ties a canary's alert to its
release)."""


def _service(cfg: StackConfig) -> list[Alert]:
    """The service: errors, latency, cache, queries."""
    a = cfg.alerts
    slo_pct = number(cfg.slo.max_error_rate * 100)
    return [
        Alert(
            name="PortalHighErrorRate",
            severity="critical",
            expr=f"{error_ratio_expr(by=BY_TRACK)} > {number(cfg.slo.max_error_rate)}",
            for_=a.for_duration,
            summary="Portal {{ $labels.track }} {{ $labels.version }} error rate is above the SLO",
            description=(
                "{{ $value | humanizePercentage }} of requests to the {{ $labels.track }} track "
                f"failed with a 5xx over the last {WINDOW} (the SLO allows {slo_pct}%)."
            ),
            value=PERCENT,
        ),
        Alert(
            name="PortalHighLatency",
            severity="warning",
            expr=(
                f"{latency_quantile_expr(0.95, by=BY_TRACK)} > {number(cfg.slo.max_p95_ms / 1000)}"
            ),
            for_=a.for_duration,
            summary="Portal {{ $labels.track }} {{ $labels.version }} p95 latency is above the SLO",
            description=(
                "p95 request latency of the {{ $labels.track }} track is "
                "{{ $value | humanizeDuration }} over the last "
                f"{WINDOW} (the SLO allows {number(cfg.slo.max_p95_ms)} ms)."
            ),
            value=DURATION,
        ),
        Alert(
            name="PortalLowCacheHitRate",
            severity="warning",
            expr=(
                f"sum(rate(cache_hits_total[{WINDOW}])) / (sum(rate(cache_hits_total[{WINDOW}]))"
                f" + sum(rate(cache_misses_total[{WINDOW}]))) < {number(a.cache_hit_rate_min)}"
            ),
            for_=a.for_duration,
            summary="Portal cache hit rate is low",
            description=(
                "{{ $value | humanizePercentage }} of cache lookups were hits over the last "
                f"{WINDOW} (expected at least {number(a.cache_hit_rate_min * 100)}%)."
            ),
            value=PERCENT,
        ),
        Alert(
            name="PortalSlowQueries",
            severity="warning",
            expr=(
                "histogram_quantile(0.95, sum by (operation, le) "
                f"(rate(db_query_duration_seconds_bucket[{WINDOW}]))) "
                f"> {number(a.slow_query_ms / 1000)}"
            ),
            for_=a.for_duration,
            summary="Portal {{ $labels.operation }} queries are slow",
            description=(
                "p95 duration of {{ $labels.operation }} queries is "
                f"{{{{ $value | humanizeDuration }}}} over the last {WINDOW} "
                f"(threshold {number(a.slow_query_ms)} ms)."
            ),
            value=DURATION,
        ),
    ]


def shorter(one: str, other: str) -> str:
    """The shorter of two durations, as written."""
    return one if parse_duration(one) <= parse_duration(other) else other


def _datastores(cfg: StackConfig) -> list[Alert]:
    """Postgres and Redis."""
    a = cfg.alerts
    return [
        Alert(
            name="PostgresConnectionSaturation",
            severity="critical",
            expr=(
                "sum by (instance) (pg_stat_activity_count) / max by (instance) "
                f"(pg_settings_max_connections) > {number(a.pg_connections_max_ratio)}"
            ),
            for_=a.for_duration,
            summary="Postgres connections are near max_connections",
            description=(
                "{{ $value | humanizePercentage }} of max_connections are in use on "
                "{{ $labels.instance }} (threshold "
                f"{number(a.pg_connections_max_ratio * 100)}%)."
            ),
            value=PERCENT,
        ),
        Alert(
            name="RedisDown",
            severity="critical",
            expr=f'redis_up == 0 or up{{job="{JOB_REDIS}"}} == 0',
            for_=shorter("1m", a.for_duration),
            summary="Redis is down",
            description=(
                "Redis at {{ $labels.instance }} does not answer (value {{ $value }}: redis_up "
                "or the exporter's scrape is 0); the portal serves from its in-process cache."
            ),
        ),
        Alert(
            name="RedisMemoryHigh",
            severity="warning",
            expr=(
                "redis_memory_used_bytes / (redis_memory_max_bytes > 0) "
                f"> {number(a.redis_memory_max_ratio)}"
            ),
            for_=a.for_duration,
            summary="Redis memory is near maxmemory",
            description=(
                "Redis at {{ $labels.instance }} uses {{ $value | humanizePercentage }} of its "
                f"maxmemory ({cfg.redis.max_memory}; threshold "
                f"{number(a.redis_memory_max_ratio * 100)}%); keys are being evicted."
            ),
            value=PERCENT,
        ),
    ]


def _workloads(cfg: StackConfig) -> list[Alert]:
    """Instances, migration Jobs and releases."""
    a = cfg.alerts
    n = cfg.names
    ns = cfg.namespace
    workloads = f"{n.stable}|{n.canary}"
    return [
        Alert(
            name="PortalInstancesNotReady",
            severity="warning",
            expr=(
                "sum by (deployment) (kube_deployment_status_replicas_unavailable"
                f'{{namespace="{ns}",deployment=~"{workloads}"}}) > 0'
            ),
            for_=a.for_duration,
            summary="Portal pods of {{ $labels.deployment }} are not ready",
            description=(
                "{{ $value }} pod(s) of {{ $labels.deployment }} in "
                f"{ns} have not been ready for {a.for_duration}."
            ),
        ),
        Alert(
            name="PortalMigrationJobFailed",
            severity="critical",
            expr=(
                "max by (job_name) (kube_job_failed"
                f'{{namespace="{ns}",job_name=~"{n.migration_job_prefix}.*",condition="true"}})'
                " > 0"
            ),
            for_=None,
            summary="Migration Job {{ $labels.job_name }} failed",
            description=(
                "Migration Job {{ $labels.job_name }} in "
                f"{ns} failed (value {{{{ $value }}}}: it hit its backoffLimit or "
                "activeDeadlineSeconds); the app Deployments were not updated."
            ),
        ),
        Alert(
            name="PortalReleaseAborted",
            severity="warning",
            expr=(
                f"time() - max by (release, version) ({RELEASE_ABORTED}"
                f'{{job="{RELEASE_JOB}",stack="{cfg.stack}"}}) < {RELEASE_ABORTED_WINDOW_S}'
            ),
            for_=None,
            summary="Release {{ $labels.release }} of {{ $labels.version }} was aborted",
            description=(
                "Release {{ $labels.release }} ({{ $labels.version }}) was aborted "
                "{{ $value | humanizeDuration }} ago and the canary rolled back; the alert "
                f"resolves {RELEASE_ABORTED_WINDOW_S // 60} minutes after the abort."
            ),
            value="aborted {{ $value | humanizeDuration }} ago",
        ),
    ]


def _rule(cfg: StackConfig, alert: Alert) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr}
    if alert.for_ is not None:
        rule["for"] = alert.for_
    rule["labels"] = {"severity": alert.severity, "runbook": alert.slug}
    rule["annotations"] = {
        "summary": alert.summary,
        "description": alert.description,
        "value": alert.value,
        "runbook_url": cfg.alerts.runbook_url(alert.slug),
        "dashboard_url": cfg.alerts.grafana_url + alert.panel.path,
    }
    return rule


_GROUPS = {
    "portal-service": (
        "PortalHighErrorRate",
        "PortalHighLatency",
        "PortalLowCacheHitRate",
        "PortalSlowQueries",
        "PortalInstancesNotReady",
    ),
    "portal-datastores": ("PostgresConnectionSaturation", "RedisDown", "RedisMemoryHigh"),
    "portal-releases": ("PortalMigrationJobFailed", "PortalReleaseAborted"),
}


def rule_groups(cfg: StackConfig) -> dict[str, Any]:
    """The rule file as a mapping (``{"groups": [...]}``)."""
    by_name = {a.name: a for a in alerts(cfg)}
    return {
        "groups": [
            {"name": group, "rules": [_rule(cfg, by_name[name]) for name in names]}
            for group, names in _GROUPS.items()
        ]
    }


def render_rules(cfg: StackConfig) -> str:
    """The rule file as text."""
    return yaml.safe_dump(rule_groups(cfg), sort_keys=False, width=1000)
