"""The sections of how releases are judged and alerts fire: the SLO, the canary steps and
policies, the alert thresholds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from contract.config.base import Section
from contract.config.errors import ConfigError
from contract.config.receivers import Receivers
from contract.config.steps import DEFAULT_STEPS, Step, parse_steps
from contract.config.types import (
    AlertName,
    BaseUrl,
    Duration,
    DurationText,
    Flag,
    FolderUrl,
    Number,
    Whole,
)
from contract.names import NAMESPACE


class Slo(Section):
    """One definition of too many errors and too slow, read by the release gates and the alert
    rules alike."""

    max_error_rate: Number = Field(
        default=0.01, gt=0.0, le=0.5, description="fraction of requests that may fail with a 5xx"
    )
    max_p95_ms: Number = Field(
        default=500.0, ge=1.0, le=60000.0, description="p95 latency limit in ms"
    )


class VerdictPolicy(Section):
    """What the engine does with a verdict that is neither PASS nor FAIL once it lasted ``limit``:
    ``fail`` or ``abort`` roll back, ``hold`` keeps the weight and waits for a human."""

    limit_s: Duration = Field(ge=0, le=86400, description="how long the verdict may last")
    then: str


class InsufficientDataPolicy(VerdictPolicy):
    """Too few canary requests for a verdict."""

    limit_s: Duration = Field(default=600.0, ge=0, le=86400, description="how long it may last")
    then: Literal["fail", "hold"] = Field(default="hold")


class ProviderErrorPolicy(VerdictPolicy):
    """Prometheus unreachable or a query failing."""

    limit_s: Duration = Field(default=120.0, ge=0, le=86400, description="how long it may last")
    then: Literal["hold", "abort"] = Field(default="abort")


class CanaryConfig(Section):
    """Canary releases."""

    steps: Annotated[tuple[Step, ...], BeforeValidator(parse_steps)] = Field(
        default=DEFAULT_STEPS,
        description="a list of {weight, analysis} or {pause: true}; weights increase, "
        "0 < weight <= 100",
        json_schema_extra={"default_text": "10/25/50/100% for 5m each"},
    )
    interval_s: Duration = Field(default=10.0, ge=0.1, le=600, description="between checks")
    settle_s: Duration = Field(
        default=15.0, ge=0, le=600, description="after a weight change before samples count"
    )
    min_requests: Whole = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="a floor: a step cannot PASS on fewer canary requests in its window "
        "(a FAIL needs none)",
    )
    max_error_rate_increase: Number = Field(
        default=0.01, ge=0.0, le=1.0, description="canary error rate allowed over stable's"
    )
    max_p95_ratio: Number = Field(
        default=1.5, gt=1.0, le=100.0, description="canary p95 / stable p95"
    )
    min_p95_increase_ms: Number = Field(
        default=50.0, ge=0.0, le=60000.0, description="ms slower before the ratio counts"
    )
    alpha: Number = Field(
        default=0.01,
        gt=0.0,
        le=0.5,
        description="the probability that a healthy release is ever rolled back by the metrics "
        "gate, over the whole release however often it is checked (anytime-valid tests); it "
        "replaces the former confidence key: alpha = 1 - confidence",
    )
    health_failures: Whole = Field(
        default=2, ge=1, le=100, description="consecutive failed probes of an instance that FAIL"
    )
    on_insufficient_data: InsufficientDataPolicy = Field(
        default=InsufficientDataPolicy(),
        description="too few canary requests for a verdict",
    )
    on_provider_error: ProviderErrorPolicy = Field(
        default=ProviderErrorPolicy(),
        description="Prometheus unreachable or a query failing",
    )
    lease_ttl_s: Duration = Field(
        default=60.0, ge=1, le=3600, description="a lease not renewed for this long is lost"
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "confidence" in data:
            raise ConfigError(
                f"{NAMESPACE}:canary.confidence",
                data["confidence"],
                "removed: the gates now hold the false-rollback probability of the whole "
                "release to portal:canary.alpha (default 0.01); replace it with "
                "alpha: 1 - confidence",
            )
        return data

    @model_validator(mode="after")
    def _windows_hold_a_check(self) -> CanaryConfig:
        for i, step in enumerate(self.steps):
            if not step.pause and step.analysis_s < self.interval_s:
                raise ConfigError(
                    f"{NAMESPACE}:canary.steps[{i}].analysis",
                    step.analysis_s,
                    f"expected at least one check interval ({self.interval_s:g}s)",
                )
        return self


DEFAULT_RUNBOOK_BASE_URL = "https://github.com/acme/portal-platform/blob/main/runbooks"
DEFAULT_GRAFANA_URL = "http://localhost:3000"
"""Where ``kubectl port-forward svc/grafana 3000`` puts Grafana (what the runbooks suggest)."""


class AlertsConfig(Section):
    """Alert thresholds beyond the SLO, and where Alertmanager sends alerts and release events."""

    cache_hit_rate_min: Number = Field(
        default=0.7, ge=0.0, le=1.0, description="hit rate below which PortalLowCacheHitRate fires"
    )
    slow_query_ms: Number = Field(
        default=250.0,
        ge=1.0,
        le=600000.0,
        description="query p95 in ms that fires PortalSlowQueries",
    )
    pg_connections_max_ratio: Number = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="share of max_connections in use that fires an alert",
    )
    redis_memory_max_ratio: Number = Field(
        default=0.9, gt=0.0, le=1.0, description="share of maxmemory in use that fires an alert"
    )
    for_duration: DurationText = Field(
        default="5m", description="how long a condition must hold before an alert fires"
    )
    runbook_base_url: FolderUrl = Field(
        default=DEFAULT_RUNBOOK_BASE_URL,
        description="where the runbooks are published; an alert's runbook_url is "
        "<runbookBaseUrl>/<slug>.md",
    )

    grafana_url: BaseUrl = Field(
        default=DEFAULT_GRAFANA_URL,
        description="where people open Grafana; a notification links the alert's panel as "
        "<grafanaUrl>/d/<dashboard>?viewPanel=<panel>",
    )
    receivers: Receivers = Field(
        default_factory=Receivers,
        description="critical alerts go to pagerduty and email (slack without either), warnings "
        "and release events to slack (email without it), all to the webhook",
    )
    group_wait: DurationText = Field(
        default="30s", description="how long Alertmanager gathers a new group's alerts"
    )
    group_interval: DurationText = Field(
        default="5m", description="between notifications of a group that changed"
    )
    repeat_interval: DurationText = Field(
        default="4h", description="before a firing group that did not change is sent again"
    )
    release_events: Flag = Field(
        default=True,
        description="portalctl posts started, step passed, promoted, aborted and held to the "
        "receivers through Alertmanager",
    )
    silence: tuple[AlertName, ...] = Field(
        default=(),
        json_schema_extra={"default_text": "none"},
        description="alerts silenced for the stack while a release runs (`portalctl release "
        "start --silence` replaces the list)",
    )

    def runbook_url(self, slug: str) -> str:
        return f"{self.runbook_base_url}/{slug}.md"
