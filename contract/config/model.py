"""The stack config model: every ``portal:`` key is one field here, with its type, bounds,
default and description. ``Pulumi.yaml``'s config descriptions are generated from it
(``python -m contract.config.docs``) and a test fails when they drift.

Field names are snake_case; the stack file spells them camelCase (``canaryReplicas``), and a few
durations drop their unit suffix (``interval`` is ``interval_s``, in seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

from contract.config.errors import ConfigError
from contract.config.steps import DEFAULT_STEPS, Step, parse_steps
from contract.config.types import (
    Allowed,
    Bucket,
    ClassName,
    Cpu,
    DnsLabel,
    Duration,
    DurationText,
    Flag,
    FolderUrl,
    Host,
    HttpUrl,
    ImageRepository,
    ImageTag,
    Memory,
    Namespace,
    Number,
    PinnedImage,
    RedisSize,
    Region,
    Retention,
    SecretName,
    SqlIdentifier,
    Whole,
)
from contract.names import NAMES, NAMESPACE, Names

_ALIASES = {
    "interval_s": "interval",
    "settle_s": "settle",
    "lease_ttl_s": "leaseTtl",
    "limit_s": "limit",
    "scrape_interval_s": "scrapeInterval",
    "for_duration": "for",
    "sentry_dsn": "sentryDsn",
}


def _alias(name: str) -> str:
    return _ALIASES.get(name) or to_camel(name)


@dataclass(frozen=True)
class Derived:
    """The default of a field that depends on another value (filled in before validation)."""

    text: str


class Section(BaseModel):
    """A mapping of the stack config: unknown keys are refused, nothing changes once read."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_alias, populate_by_name=True
    )


class Resources(Section):
    """Kubernetes requests and limits of one container."""

    cpu_request: Cpu = Field(description="CPU request")
    memory_request: Memory = Field(description="memory request")
    cpu_limit: Cpu = Field(description="CPU limit")
    memory_limit: Memory = Field(description="memory limit")

    def as_k8s(self) -> dict[str, dict[str, str]]:
        """The ``resources`` block of a container spec."""
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


def merged_over(default: Section) -> BeforeValidator:
    """A mapping given for this key is laid over ``default``: keys not given keep its values."""

    def over(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {**default.model_dump(by_alias=True), **value}
        return value

    return BeforeValidator(over)


def container_resources(
    cpu_request: str, memory_request: str, cpu_limit: str, memory_limit: str
) -> Resources:
    """Requests and limits in the order Kubernetes writes them."""
    return Resources(
        cpu_request=cpu_request,
        memory_request=memory_request,
        cpu_limit=cpu_limit,
        memory_limit=memory_limit,
    )


APP_RESOURCES = container_resources("250m", "256Mi", "1", "512Mi")
POSTGRES_RESOURCES = container_resources("250m", "512Mi", "1", "1Gi")
REDIS_RESOURCES = container_resources("100m", "128Mi", "500m", "512Mi")
PROMETHEUS_RESOURCES = container_resources("200m", "512Mi", "1", "2Gi")
GRAFANA_RESOURCES = container_resources("100m", "128Mi", "500m", "512Mi")
JAEGER_RESOURCES = container_resources("100m", "256Mi", "500m", "1Gi")


class Hpa(Section):
    """The stable Deployment's autoscaler."""

    min_replicas: Annotated[Whole, Derived("replicas")] = Field(ge=1, le=100)
    max_replicas: Annotated[Whole, Derived("max(minReplicas, 2 x replicas)")] = Field(ge=1, le=200)
    target_cpu_percent: Whole = Field(
        default=70, ge=10, le=100, description="CPU utilisation target"
    )


class CacheTtl(Section):
    """TTL classes of the service's cache, in seconds."""

    short: Whole = Field(default=60, ge=1, le=86400)
    medium: Whole = Field(default=300, ge=1, le=86400)
    long: Whole = Field(default=3600, ge=1, le=604800)


class AppConfig(Section):
    """The portal service (required)."""

    image: ImageRepository = Field(description="image repository, without a tag; required")
    version: ImageTag = Field(
        description="the stable image tag; required; `portalctl release` rewrites it on promotion"
    )
    replicas: Whole = Field(default=2, ge=1, le=100, description="stable pods")
    canary_replicas: Whole = Field(default=1, ge=1, le=100, description="pods during a release")
    port: Whole = Field(default=8000, ge=1024, le=65535, description="the service's HTTP port")
    resources: Annotated[Resources, merged_over(APP_RESOURCES)] = APP_RESOURCES
    hpa: Hpa = Field(description="the stable Deployment's autoscaler")
    pdb_min_available: Annotated[Whole, Derived("replicas - 1, at least 1")] = Field(
        ge=0, le=100, description="PodDisruptionBudget minAvailable"
    )
    cache_ttl: CacheTtl = Field(
        default=CacheTtl(), description="TTL classes of the cache, in seconds"
    )
    slow_query_ms: Whole = Field(
        default=200, ge=1, le=600000, description="slow-query log threshold"
    )
    slow_request_ms: Whole = Field(
        default=1000, ge=1, le=600000, description="slow-request threshold"
    )
    db_pool_size: Whole = Field(default=10, ge=1, le=200, description="Postgres pool per instance")
    trace_sample_ratio: Number = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of requests that start a trace (PORTAL_TRACE_SAMPLE_RATIO)",
    )

    @property
    def stable_image(self) -> str:
        return f"{self.image}:{self.version}"

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        replicas = data.get("replicas", 2)
        if isinstance(replicas, int | float) and not isinstance(replicas, bool):
            n = int(replicas)
            hpa = data.get("hpa")
            if hpa is None or isinstance(hpa, Mapping):
                hpa = dict(hpa or {})
                hpa.setdefault("minReplicas", n)
                low = hpa["minReplicas"]
                if isinstance(low, int | float) and not isinstance(low, bool):
                    hpa.setdefault("maxReplicas", max(int(low), n * 2))
                data["hpa"] = hpa
            data.setdefault("pdbMinAvailable", max(1, n - 1))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        path = f"{NAMESPACE}:app"
        hpa = self.hpa
        if hpa.max_replicas < hpa.min_replicas:
            raise ConfigError(
                f"{path}.hpa.maxReplicas",
                hpa.max_replicas,
                f"expected at least minReplicas ({hpa.min_replicas})",
            )
        if not hpa.min_replicas <= self.replicas <= hpa.max_replicas:
            raise ConfigError(
                f"{path}.replicas",
                self.replicas,
                f"expected within the autoscaler's range {hpa.min_replicas}..{hpa.max_replicas}",
            )
        if self.pdb_min_available >= self.replicas > 1:
            raise ConfigError(
                f"{path}.pdbMinAvailable",
                self.pdb_min_available,
                f"expected below replicas ({self.replicas}) so nodes can be drained",
            )
        ttl = self.cache_ttl
        if not ttl.short <= ttl.medium <= ttl.long:
            raise ConfigError(
                f"{path}.cacheTtl", ttl.model_dump(), "expected short <= medium <= long"
            )
        return self


class TrafficConfig(Section):
    """Traffic split between stable and canary."""

    mode: Literal["ingress", "replicas"] = Field(
        default="ingress",
        description="ingress: an ingress-nginx canary Ingress with canary-weight; replicas: the "
        "weight is approximated by the pod ratio where no ingress controller exists",
    )
    host: Annotated[Host, Derived("portal.<stack>.example.com")] = Field(
        description="the public host name"
    )
    ingress_class: ClassName = Field(default="nginx", description="IngressClass")
    tls_secret: SecretName | None = Field(
        default=None, description="Secret holding the TLS certificate"
    )


DEFAULT_IMAGES = {
    "postgres": "postgres:16.4-alpine",
    "postgresExporter": "quay.io/prometheuscommunity/postgres-exporter:v0.15.0",
    "redis": "redis:7.4.1-alpine",
    "redisExporter": "oliver006/redis_exporter:v1.66.0",
    "prometheus": "prom/prometheus:v2.54.1",
    "grafana": "grafana/grafana:11.3.0",
    "jaeger": "jaegertracing/all-in-one:1.62.0",
    "kubeStateMetrics": "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.13.0",
    "pushgateway": "prom/pushgateway:v1.10.0",
    "backupUploader": "amazon/aws-cli:2.18.0",
}


class PostgresConfig(Section):
    """PostgreSQL StatefulSet; its password is generated (pulumi_random) and kept in a Secret."""

    image: PinnedImage = Field(default=DEFAULT_IMAGES["postgres"], description="pinned by tag")
    exporter_image: PinnedImage = Field(default=DEFAULT_IMAGES["postgresExporter"])
    database: SqlIdentifier = Field(default="portal")
    user: SqlIdentifier = Field(default="portal")
    storage_size: Memory = Field(default="10Gi", description="the data volume")
    storage_class: ClassName | None = Field(
        default=None, description="StorageClass of the data volume"
    )
    max_connections: Whole = Field(default=100, ge=10, le=10000)
    resources: Annotated[Resources, merged_over(POSTGRES_RESOURCES)] = POSTGRES_RESOURCES


class RedisConfig(Section):
    """Redis; its password is generated and kept in a Secret."""

    image: PinnedImage = Field(default=DEFAULT_IMAGES["redis"], description="pinned by tag")
    exporter_image: PinnedImage = Field(default=DEFAULT_IMAGES["redisExporter"])
    max_memory: RedisSize = Field(
        default="256mb", description="maxmemory; the memory alert fires near it"
    )
    resources: Annotated[Resources, merged_over(REDIS_RESOURCES)] = REDIS_RESOURCES

    @property
    def max_memory_bytes(self) -> int:
        number, unit = int(self.max_memory[:-2]), self.max_memory[-2:]
        return number * {"kb": 1024, "mb": 1024**2, "gb": 1024**3}[unit]


class BackupConfig(Section):
    """Optional pre-migration backup (pg_dump to S3) before each migration Job."""

    enabled: Flag = Field(default=False)
    bucket: Bucket | None = Field(default=None, description="required when enabled")
    region: Region = Field(default="us-east-1")
    endpoint: HttpUrl | None = Field(default=None, description="S3-compatible endpoint URL")
    credentials_secret: SecretName | None = Field(
        default=None,
        description="existing Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
        "required when enabled",
    )
    uploader_image: PinnedImage = Field(
        default=DEFAULT_IMAGES["backupUploader"],
        description="the AWS CLI image that uploads the dump",
    )

    @model_validator(mode="after")
    def _complete(self) -> BackupConfig:
        path = f"{NAMESPACE}:migrations.backup"
        if self.enabled and self.bucket is None:
            raise ConfigError(f"{path}.bucket", None, "required: an S3 bucket name")
        if self.enabled and self.credentials_secret is None:
            raise ConfigError(
                f"{path}.credentialsSecret",
                None,
                "required: the name of a Secret holding AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )
        return self


class MigrationsConfig(Section):
    """The migration Job run for each app version."""

    backoff_limit: Whole = Field(default=2, ge=0, le=10)
    active_deadline_seconds: Whole = Field(default=1800, ge=60, le=86400)
    ttl_seconds_after_finished: Whole = Field(default=86400, ge=0, le=2592000)
    backup: BackupConfig = Field(
        default=BackupConfig(),
        description="with enabled the Job first runs pg_dump and uploads the dump to "
        "s3://<bucket>/<namespace>/pre-migration/<version>-<timestamp>.dump; a failed backup "
        "fails the Job",
    )


class ObservabilityConfig(Section):
    """Prometheus, Grafana, Jaeger, kube-state-metrics and the Pushgateway; every image pinned by
    tag."""

    prometheus_image: PinnedImage = Field(default=DEFAULT_IMAGES["prometheus"])
    grafana_image: PinnedImage = Field(default=DEFAULT_IMAGES["grafana"])
    jaeger_image: PinnedImage = Field(default=DEFAULT_IMAGES["jaeger"])
    retention: Retention = Field(default="15d", description="Prometheus retention")
    scrape_interval_s: Duration = Field(default=15.0, ge=1, le=300, description="scrape interval")
    prometheus_storage_size: Memory = Field(default="20Gi")
    prometheus_resources: Annotated[Resources, merged_over(PROMETHEUS_RESOURCES)] = (
        PROMETHEUS_RESOURCES
    )
    grafana_resources: Annotated[Resources, merged_over(GRAFANA_RESOURCES)] = GRAFANA_RESOURCES
    jaeger_resources: Annotated[Resources, merged_over(JAEGER_RESOURCES)] = JAEGER_RESOURCES
    kube_state_metrics_image: PinnedImage = Field(
        default=DEFAULT_IMAGES["kubeStateMetrics"],
        description="limited to the namespace, for the Job and Deployment alerts",
    )
    pushgateway_image: PinnedImage = Field(
        default=DEFAULT_IMAGES["pushgateway"], description="where portalctl pushes release events"
    )


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


class AlertsConfig(Section):
    """Alert thresholds beyond the SLO."""

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

    def runbook_url(self, slug: str) -> str:
        return f"{self.runbook_base_url}/{slug}.md"


def _secret(value: Any) -> str:
    if isinstance(value, str) or (isinstance(value, Mapping) and set(value) == {"secure"}):
        return "[secret]"
    raise ValueError("not a secret")


Secret = Annotated[
    str,
    BeforeValidator(_secret),
    Allowed("expected a secret string (pulumi config set --secret portal:sentryDsn https://...)"),
]


class StackConfig(Section):
    """The whole stack config, validated."""

    environment: Annotated[DnsLabel, Derived("the stack name")] = Field(
        description="label put on every object (app.kubernetes.io/instance)"
    )
    namespace: Annotated[Namespace, Derived("portal-<stack>")] = Field(
        description="namespace the stack deploys into"
    )
    app: AppConfig
    traffic: Annotated[TrafficConfig, Derived("the host from the stack name")]
    postgres: PostgresConfig = Field(default=PostgresConfig())
    redis: RedisConfig = Field(default=RedisConfig())
    migrations: MigrationsConfig = Field(default=MigrationsConfig())
    observability: ObservabilityConfig = Field(default=ObservabilityConfig())
    slo: Slo = Field(default=Slo())
    canary: CanaryConfig = Field(default=CanaryConfig())
    alerts: AlertsConfig = Field(default=AlertsConfig())
    sentry_dsn: Secret | None = Field(
        default=None,
        description="optional Sentry DSN (`pulumi config set --secret portal:sentryDsn ...`); "
        "Sentry is off without it",
        json_schema_extra={"secret": True},
    )
    _stack: str = PrivateAttr("")

    @property
    def stack(self) -> str:
        return self._stack

    @property
    def names(self) -> Names:
        return NAMES

    @property
    def sentry_enabled(self) -> bool:
        return self.sentry_dsn is not None

    @model_validator(mode="before")
    @classmethod
    def _stack_defaults(cls, data: Any, info: Any) -> Any:
        stack = str((info.context or {}).get("stack", ""))
        if not isinstance(data, Mapping):
            return data
        # Empty reads as unset: it is the default Pulumi.yaml declares for an optional key, which
        # the engine passes to the program when the stack leaves the key out.
        data = {k: v for k, v in data.items() if not (k in _EMPTY_IS_UNSET and v == "")}
        if "app" not in data:
            raise ConfigError(
                f"{NAMESPACE}:app", None, "required: a mapping with at least image and version"
            )
        data.setdefault("environment", stack)
        data.setdefault("namespace", f"portal-{stack}")
        traffic = data.get("traffic")
        if traffic is None or isinstance(traffic, Mapping):
            data["traffic"] = {"host": f"portal.{stack}.example.com", **(traffic or {})}
        return data

    @model_validator(mode="after")
    def _remember_stack(self, info: Any) -> StackConfig:
        self._stack = str((info.context or {}).get("stack", ""))
        return self


_EMPTY_IS_UNSET = ("environment", "namespace", "sentryDsn")

CONFIG_KEYS: tuple[str, ...] = tuple(
    field.alias or name for name, field in StackConfig.model_fields.items()
)
"""Every top-level key (``portal:<key>``), in the order of the model."""

SECRET_KEYS = frozenset({"sentryDsn"})
"""Keys that may only hold Pulumi secrets: the model records whether they are set, not the value."""
