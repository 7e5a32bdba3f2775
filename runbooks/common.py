"""What the runbooks share: the dashboards their panels are on, the communication templates,
and the PromQL checks several runbooks run (with the stack's thresholds)."""

from __future__ import annotations

from contract import promql
from contract.config import StackConfig
from contract.panels import Panel
from runbooks.model import (
    WINDOW,
    Query,
    Severity,
    Templates,
)

FLUSH_PATTERN = "users:list:*"
"""The cache keys a Redis-memory runbook flushes first: list pages are many, big and cheap to
rebuild."""


def templates(cfg: StackConfig, slug: str, title: str, metric: str, panel: Panel) -> Templates:
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


def error_rate_query(cfg: StackConfig, by: str, severity: Severity) -> Query:
    return Query(
        title=f"Error rate (5xx share of user requests) by {by}",
        promql=promql.error_ratio_expr(by=by, window=WINDOW),
        op=">",
        threshold=cfg.slo.max_error_rate,
        unit="ratio",
        severity=severity,
        config_key="portal:slo.maxErrorRate",
    )


def p95_query(cfg: StackConfig, by: str, severity: Severity) -> Query:
    return Query(
        title=f"p95 request latency by {by}",
        promql=promql.latency_quantile_expr(0.95, by=by, window=WINDOW),
        op=">",
        threshold=cfg.slo.max_p95_ms / 1000,
        unit="seconds",
        severity=severity,
        config_key="portal:slo.maxP95Ms",
    )


def db_p95_query(cfg: StackConfig, severity: Severity) -> Query:
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


def cache_hit_rate_query(cfg: StackConfig) -> Query:
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


def redis_errors_query(severity: Severity) -> Query:
    return Query(
        title="Failed Redis round trips per second by operation",
        promql=(f'sum by (operation) (rate(redis_operations_total{{status="error"}}[{WINDOW}]))'),
        op=">",
        threshold=0,
        unit="count",
        severity=severity,
    )
