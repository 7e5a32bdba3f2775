"""The one config model of the portal platform.

Plain, frozen dataclasses parsed from a mapping, with no Pulumi import. The Pulumi program fills
it from ``pulumi.Config``; the release engine and the runbooks fill it from
``Pulumi.<stack>.yaml``. Steps, thresholds and names therefore have one definition that feeds
the deployed objects, the release gates and the alert rules alike.

Every error names the key (``portal:<path>``), the value at fault and what is allowed, and is
raised before anything is created or changed.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

NAMESPACE = "portal"
"""The Pulumi config namespace: keys are written ``portal:<key>`` in the stack files."""

SECRET_KEYS = frozenset({"sentryDsn"})
"""Keys that may only hold Pulumi secrets: the model records whether they are set, not the value."""


class ConfigError(ValueError):
    """A stack config value is wrong. ``key`` is the full ``portal:`` path of the value at fault."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: {_show(value)}: {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------------------------
# Small typed readers. Each takes the mapping, the key inside it and the dotted path for errors.
# --------------------------------------------------------------------------------------------

_MISSING = object()
T = TypeVar("T")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REDIS_MEMORY = re.compile(r"^\d+(kb|mb|gb)$")
_RETENTION = re.compile(r"^\d+(h|d|w|y)$")


def _path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else f"{NAMESPACE}:{key}"


def _obj(value: Any, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    """A mapping whose keys are all in ``allowed``; ``None`` reads as an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, f"expected a mapping with keys {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                _path(path, str(key)),
                value[key],
                f"unknown key{hint}; known keys: {', '.join(allowed)}",
            )
    return value


def _int(m: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = m.get(key, default)
    # Pulumi and YAML may hand integral numbers back as floats (2.0); accept those, refuse 2.5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(_path(path, key), value, f"expected a whole number from {lo} to {hi}")
    return value


def _float(
    m: Mapping[str, Any],
    key: str,
    path: str,
    default: float,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
) -> float:
    value = m.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        low = f"above {lo:g}" if lo_open else f"from {lo:g}"
        raise ConfigError(_path(path, key), value, f"expected a number {low} up to {hi:g}")
    return float(value)


def _bool(m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = m.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(_path(path, key), value, "expected true or false")
    return value


def _str(
    m: Mapping[str, Any],
    key: str,
    path: str,
    default: str | None,
    pattern: re.Pattern[str],
    what: str,
) -> str:
    value = m.get(key, default)
    if value is None:
        raise ConfigError(_path(path, key), value, f"required: {what}")
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(_path(path, key), value, f"expected {what}")
    return value


def _choice(m: Mapping[str, Any], key: str, path: str, default: T, choices: Sequence[T]) -> T:
    value = m.get(key, default)
    if value not in choices:
        allowed = ", ".join(map(str, choices))
        raise ConfigError(_path(path, key), value, f"expected one of {allowed}")
    return value  # type: ignore[no-any-return]


def parse_duration(value: Any, path: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"500ms"``, ``"2m"`` or ``"1h"``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            number, unit = float(match.group(1)), match.group(2)
            return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    raise ConfigError(path, value, 'expected a duration such as 30, "30s", "500ms", "5m" or "1h"')


def _duration(
    m: Mapping[str, Any],
    key: str,
    path: str,
    default: str | float,
    lo: float,
    hi: float,
) -> float:
    seconds = parse_duration(m.get(key, default), _path(path, key))
    if not lo <= seconds <= hi:
        raise ConfigError(
            _path(path, key), m.get(key, default), f"expected a duration from {lo:g}s to {hi:g}s"
        )
    return seconds


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one container."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    KEYS = ("cpuRequest", "memoryRequest", "cpuLimit", "memoryLimit")

    @classmethod
    def parse(cls, value: Any, path: str, default: Resources) -> Resources:
        m = _obj(value, path, cls.KEYS)
        return cls(
            cpu_request=_str(
                m,
                "cpuRequest",
                path,
                default.cpu_request,
                _CPU,
                'a CPU quantity such as "250m" or "1"',
            ),
            memory_request=_str(
                m,
                "memoryRequest",
                path,
                default.memory_request,
                _MEMORY,
                'a memory quantity such as "256Mi"',
            ),
            cpu_limit=_str(
                m, "cpuLimit", path, default.cpu_limit, _CPU, 'a CPU quantity such as "500m" or "2"'
            ),
            memory_limit=_str(
                m,
                "memoryLimit",
                path,
                default.memory_limit,
                _MEMORY,
                'a memory quantity such as "512Mi"',
            ),
        )

    def as_k8s(self) -> dict[str, dict[str, str]]:
        """The ``resources`` block of a container spec."""
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


@dataclass(frozen=True)
class CacheTtl:
    """TTL classes of the service's cache, in seconds."""

    short: int = 60
    medium: int = 300
    long: int = 3600


@dataclass(frozen=True)
class AppConfig:
    """The portal service: image, sizes and its own tunables."""

    image: str
    """Image repository of the portal service, without a tag (the tag is ``version``)."""
    version: str
    """The stable version: image tag the stable Deployment runs. Promotion rewrites it."""
    replicas: int
    canary_replicas: int
    port: int
    resources: Resources
    hpa_min: int
    hpa_max: int
    hpa_cpu_percent: int
    pdb_min_available: int
    cache_ttl: CacheTtl
    slow_query_ms: int
    slow_request_ms: int
    db_pool_size: int
    trace_sample_ratio: float
    """Share of requests that start a trace (``PORTAL_TRACE_SAMPLE_RATIO``)."""

    @property
    def stable_image(self) -> str:
        return f"{self.image}:{self.version}"


@dataclass(frozen=True)
class TrafficConfig:
    """How traffic is split between stable and canary."""

    mode: Literal["ingress", "replicas"]
    """``ingress``: ingress-nginx canary Ingress with ``canary-weight``; ``replicas``: the weight
    is approximated by the ratio of canary to stable replicas (no ingress controller needed)."""
    host: str
    ingress_class: str
    tls_secret: str | None


@dataclass(frozen=True)
class PostgresConfig:
    image: str
    exporter_image: str
    database: str
    user: str
    storage_size: str
    storage_class: str | None
    max_connections: int
    resources: Resources


@dataclass(frozen=True)
class RedisConfig:
    image: str
    exporter_image: str
    max_memory: str
    """Redis ``maxmemory`` (e.g. ``256mb``); the memory alert fires near it."""
    resources: Resources

    @property
    def max_memory_bytes(self) -> int:
        number, unit = int(self.max_memory[:-2]), self.max_memory[-2:]
        return number * {"kb": 1024, "mb": 1024**2, "gb": 1024**3}[unit]


@dataclass(frozen=True)
class BackupConfig:
    """Optional pre-migration backup (pg_dump to S3) before each migration Job."""

    enabled: bool
    bucket: str | None
    region: str
    endpoint: str | None
    credentials_secret: str | None
    """Name of an existing Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."""
    uploader_image: str
    """Python image (standard library only) that uploads the dump to S3, pinned by tag."""


@dataclass(frozen=True)
class MigrationsConfig:
    backoff_limit: int
    active_deadline_seconds: int
    ttl_seconds_after_finished: int
    backup: BackupConfig


@dataclass(frozen=True)
class ObservabilityConfig:
    prometheus_image: str
    grafana_image: str
    jaeger_image: str
    retention: str
    scrape_interval_s: float
    prometheus_storage_size: str
    prometheus_resources: Resources
    grafana_resources: Resources
    jaeger_resources: Resources
    kube_state_metrics_image: str
    """kube-state-metrics (Job and Deployment state for the alert rules), pinned by tag."""
    pushgateway_image: str
    """Prometheus Pushgateway (release events pushed by portalctl), pinned by tag."""


@dataclass(frozen=True)
class Slo:
    """One definition of "too many errors" and "too slow", read by the release gates and the
    alert rules alike."""

    max_error_rate: float
    """Fraction of requests that may fail (status 5xx), e.g. 0.01 for 1%."""
    max_p95_ms: float
    """p95 request latency above which the service is too slow."""


@dataclass(frozen=True)
class Step:
    """One canary step: set ``weight`` percent of traffic then analyse for ``analysis_s``;
    or, with ``pause``, wait for a human's ``portalctl release promote``."""

    weight: int | None
    analysis_s: float
    pause: bool = False

    def describe(self) -> str:
        if self.pause:
            return "pause for approval"
        return f"{self.weight}% for {self.analysis_s:g}s"


@dataclass(frozen=True)
class VerdictPolicy:
    """What the engine does with a verdict that is neither PASS nor FAIL."""

    limit_s: float
    """How long the verdict may last before ``then`` applies."""
    then: Literal["fail", "hold", "abort"]
    """``fail``: roll back; ``hold``: keep the weight and wait for a human; ``abort``: roll back."""


@dataclass(frozen=True)
class CanaryConfig:
    steps: tuple[Step, ...]
    interval_s: float
    """How often checks run inside an analysis window."""
    settle_s: float
    """Time after a weight change before samples count (lets traffic and scrapes catch up)."""
    min_requests: int
    """A floor: a step cannot PASS on fewer canary requests in its window (a FAIL needs none)."""
    max_error_rate_increase: float
    """Canary error rate may exceed stable's by at most this much (absolute fraction)."""
    max_p95_ratio: float
    """Canary p95 may be at most this multiple of stable's p95."""
    min_p95_increase_ms: float
    """...and must also be at least this many ms slower before the ratio counts (noise floor)."""
    alpha: float
    """The probability that a healthy release is ever rolled back by the metrics gate, over
    the whole release however often it is checked (anytime-valid tests)."""
    health_failures: int
    """Consecutive failed health probes of a canary instance that make a FAIL."""
    on_insufficient_data: VerdictPolicy
    on_provider_error: VerdictPolicy
    lease_ttl_s: float
    """A release lease not renewed for this long is lost (a crashed portalctl)."""


@dataclass(frozen=True)
class AlertsConfig:
    """Alert thresholds that are not part of the SLO."""

    cache_hit_rate_min: float
    slow_query_ms: float
    pg_connections_max_ratio: float
    redis_memory_max_ratio: float
    for_duration: str
    """How long a condition must hold before an alert fires (Prometheus ``for``)."""
    runbook_base_url: str
    """Where the runbooks are published; an alert's ``runbook_url`` is ``<base>/<slug>.md``."""

    def runbook_url(self, slug: str) -> str:
        return f"{self.runbook_base_url}/{slug}.md"


@dataclass(frozen=True)
class Names:
    """The Kubernetes names the components create and the release engine and runbooks use."""

    app: str = "portal"

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

    @property
    def migration_job_prefix(self) -> str:
        """Every migration Job's name starts with this (the alert rules match on it)."""
        return f"{self.app}-migrate-"

    def migration_job(self, version: str, phase: str = "expand") -> str:
        """One Job per app version and phase, so a new release runs a new Job."""
        slug = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")
        suffix = "" if phase == "expand" else f"-{phase}"
        return f"{self.migration_job_prefix}{slug}"[: 63 - len(suffix)].rstrip("-") + suffix


@dataclass(frozen=True)
class StackConfig:
    """The whole stack config, validated."""

    stack: str
    environment: str
    namespace: str
    app: AppConfig
    traffic: TrafficConfig
    postgres: PostgresConfig
    redis: RedisConfig
    migrations: MigrationsConfig
    observability: ObservabilityConfig
    slo: Slo
    canary: CanaryConfig
    alerts: AlertsConfig
    sentry_enabled: bool = False
    names: Names = field(default_factory=Names)


# --------------------------------------------------------------------------------------------
# Defaults (images pinned by tag) and parsing.
# --------------------------------------------------------------------------------------------

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
    "backupUploader": "python:3.12.7-alpine3.20",
}

DEFAULT_RUNBOOK_BASE_URL = "https://github.com/acme/portal-platform/blob/main/runbooks"

_APP_RES = Resources("250m", "256Mi", "1", "512Mi")
_PG_RES = Resources("250m", "512Mi", "1", "1Gi")
_REDIS_RES = Resources("100m", "128Mi", "500m", "512Mi")
_PROM_RES = Resources("200m", "512Mi", "1", "2Gi")
_GRAFANA_RES = Resources("100m", "128Mi", "500m", "512Mi")
_JAEGER_RES = Resources("100m", "256Mi", "500m", "1Gi")

DEFAULT_STEPS: tuple[Step, ...] = (
    Step(10, 300.0),
    Step(25, 300.0),
    Step(50, 300.0),
    Step(100, 300.0),
)

TOP_LEVEL_KEYS = (
    "environment",
    "namespace",
    "app",
    "traffic",
    "postgres",
    "redis",
    "migrations",
    "observability",
    "slo",
    "canary",
    "alerts",
    "sentryDsn",
)


def _pinned_image(m: Mapping[str, Any], key: str, path: str, default: str) -> str:
    value = m.get(key, default)
    if not isinstance(value, str) or ":" not in value.rsplit("/", 1)[-1]:
        raise ConfigError(_path(path, key), value, "expected an image pinned by tag (name:tag)")
    repo, tag = value.rsplit(":", 1)
    if tag == "latest" or not _IMAGE_TAG.match(tag) or not _IMAGE_REPO.match(repo):
        raise ConfigError(
            _path(path, key), value, "expected an image pinned by tag (name:tag, and not :latest)"
        )
    return value


def _parse_app(value: Any) -> AppConfig:
    path = f"{NAMESPACE}:app"
    m = _obj(
        value,
        path,
        (
            "image",
            "version",
            "replicas",
            "canaryReplicas",
            "port",
            "resources",
            "hpa",
            "pdbMinAvailable",
            "cacheTtl",
            "slowQueryMs",
            "slowRequestMs",
            "dbPoolSize",
            "traceSampleRatio",
        ),
    )
    image = _str(
        m,
        "image",
        path,
        None,
        _IMAGE_REPO,
        'an image repository without a tag, e.g. "ghcr.io/acme/portal"',
    )
    version = _str(
        m, "version", path, None, _IMAGE_TAG, 'an image tag such as "1.4.0" (not "latest")'
    )
    if version == "latest":
        raise ConfigError(f"{path}.version", version, 'expected a pinned tag, not "latest"')
    replicas = _int(m, "replicas", path, 2, 1, 100)
    hpa_path = f"{path}.hpa"
    hpa = _obj(m.get("hpa"), hpa_path, ("minReplicas", "maxReplicas", "targetCpuPercent"))
    hpa_min = _int(hpa, "minReplicas", hpa_path, replicas, 1, 100)
    hpa_max = _int(hpa, "maxReplicas", hpa_path, max(hpa_min, replicas * 2), 1, 200)
    if hpa_max < hpa_min:
        raise ConfigError(
            f"{hpa_path}.maxReplicas", hpa_max, f"expected at least minReplicas ({hpa_min})"
        )
    if not hpa_min <= replicas <= hpa_max:
        raise ConfigError(
            f"{path}.replicas",
            replicas,
            f"expected within the autoscaler's range {hpa_min}..{hpa_max}",
        )
    pdb = _int(m, "pdbMinAvailable", path, max(1, replicas - 1), 0, 100)
    if pdb >= replicas > 1:
        raise ConfigError(
            f"{path}.pdbMinAvailable",
            pdb,
            f"expected below replicas ({replicas}) so nodes can be drained",
        )
    ttl_path = f"{path}.cacheTtl"
    ttl = _obj(m.get("cacheTtl"), ttl_path, ("short", "medium", "long"))
    cache_ttl = CacheTtl(
        short=_int(ttl, "short", ttl_path, 60, 1, 86400),
        medium=_int(ttl, "medium", ttl_path, 300, 1, 86400),
        long=_int(ttl, "long", ttl_path, 3600, 1, 604800),
    )
    if not cache_ttl.short <= cache_ttl.medium <= cache_ttl.long:
        raise ConfigError(ttl_path, m.get("cacheTtl"), "expected short <= medium <= long")
    return AppConfig(
        image=image,
        version=version,
        replicas=replicas,
        canary_replicas=_int(m, "canaryReplicas", path, 1, 1, 100),
        port=_int(m, "port", path, 8000, 1024, 65535),
        resources=Resources.parse(m.get("resources"), f"{path}.resources", _APP_RES),
        hpa_min=hpa_min,
        hpa_max=hpa_max,
        hpa_cpu_percent=_int(hpa, "targetCpuPercent", hpa_path, 70, 10, 100),
        pdb_min_available=pdb,
        cache_ttl=cache_ttl,
        slow_query_ms=_int(m, "slowQueryMs", path, 200, 1, 600000),
        slow_request_ms=_int(m, "slowRequestMs", path, 1000, 1, 600000),
        db_pool_size=_int(m, "dbPoolSize", path, 10, 1, 200),
        trace_sample_ratio=_float(m, "traceSampleRatio", path, 1.0, 0.0, 1.0),
    )


def _parse_traffic(value: Any, stack: str) -> TrafficConfig:
    path = f"{NAMESPACE}:traffic"
    m = _obj(value, path, ("mode", "host", "ingressClass", "tlsSecret"))
    tls = m.get("tlsSecret")
    if tls is not None and (not isinstance(tls, str) or not _DNS_LABEL.match(tls)):
        raise ConfigError(f"{path}.tlsSecret", tls, "expected the name of a Secret (DNS label)")
    return TrafficConfig(
        mode=_choice(m, "mode", path, "ingress", ("ingress", "replicas")),
        host=_str(m, "host", path, f"portal.{stack}.example.com", _HOST, "a DNS host name"),
        ingress_class=_str(m, "ingressClass", path, "nginx", _DNS_LABEL, "an IngressClass name"),
        tls_secret=tls,
    )


def _parse_postgres(value: Any) -> PostgresConfig:
    path = f"{NAMESPACE}:postgres"
    m = _obj(
        value,
        path,
        (
            "image",
            "exporterImage",
            "database",
            "user",
            "storageSize",
            "storageClass",
            "maxConnections",
            "resources",
        ),
    )
    ident = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
    storage_class = m.get("storageClass")
    if storage_class is not None and (
        not isinstance(storage_class, str) or not _DNS_LABEL.match(storage_class)
    ):
        raise ConfigError(f"{path}.storageClass", storage_class, "expected a StorageClass name")
    return PostgresConfig(
        image=_pinned_image(m, "image", path, DEFAULT_IMAGES["postgres"]),
        exporter_image=_pinned_image(m, "exporterImage", path, DEFAULT_IMAGES["postgresExporter"]),
        database=_str(m, "database", path, "portal", ident, "a lower-case SQL identifier"),
        user=_str(m, "user", path, "portal", ident, "a lower-case SQL identifier"),
        storage_size=_str(m, "storageSize", path, "10Gi", _MEMORY, 'a size such as "10Gi"'),
        storage_class=storage_class,
        max_connections=_int(m, "maxConnections", path, 100, 10, 10000),
        resources=Resources.parse(m.get("resources"), f"{path}.resources", _PG_RES),
    )


def _parse_redis(value: Any) -> RedisConfig:
    path = f"{NAMESPACE}:redis"
    m = _obj(value, path, ("image", "exporterImage", "maxMemory", "resources"))
    return RedisConfig(
        image=_pinned_image(m, "image", path, DEFAULT_IMAGES["redis"]),
        exporter_image=_pinned_image(m, "exporterImage", path, DEFAULT_IMAGES["redisExporter"]),
        max_memory=_str(
            m, "maxMemory", path, "256mb", _REDIS_MEMORY, 'a Redis size such as "256mb" or "1gb"'
        ),
        resources=Resources.parse(m.get("resources"), f"{path}.resources", _REDIS_RES),
    )


def _parse_migrations(value: Any) -> MigrationsConfig:
    path = f"{NAMESPACE}:migrations"
    m = _obj(
        value,
        path,
        (
            "backoffLimit",
            "activeDeadlineSeconds",
            "ttlSecondsAfterFinished",
            "backup",
        ),
    )
    bpath = f"{path}.backup"
    b = _obj(
        m.get("backup"),
        bpath,
        ("enabled", "bucket", "region", "endpoint", "credentialsSecret", "uploaderImage"),
    )
    enabled = _bool(b, "enabled", bpath, False)
    bucket = b.get("bucket")
    secret = b.get("credentialsSecret")
    endpoint = b.get("endpoint")
    if enabled or bucket is not None:
        bucket = _str(b, "bucket", bpath, None, _BUCKET, "an S3 bucket name")
    if enabled or secret is not None:
        secret = _str(
            b,
            "credentialsSecret",
            bpath,
            None,
            _DNS_LABEL,
            "the name of a Secret holding AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )
    if endpoint is not None and (
        not isinstance(endpoint, str) or not re.match(r"^https?://[^\s]+$", endpoint)
    ):
        raise ConfigError(f"{bpath}.endpoint", endpoint, "expected an http(s) URL")
    return MigrationsConfig(
        backoff_limit=_int(m, "backoffLimit", path, 2, 0, 10),
        active_deadline_seconds=_int(m, "activeDeadlineSeconds", path, 1800, 60, 86400),
        ttl_seconds_after_finished=_int(m, "ttlSecondsAfterFinished", path, 86400, 0, 2592000),
        backup=BackupConfig(
            enabled=enabled,
            bucket=bucket,
            region=_str(
                b, "region", bpath, "us-east-1", re.compile(r"^[a-z0-9-]+$"), "an AWS region name"
            ),
            endpoint=endpoint,
            credentials_secret=secret,
            uploader_image=_pinned_image(
                b, "uploaderImage", bpath, DEFAULT_IMAGES["backupUploader"]
            ),
        ),
    )


def _parse_observability(value: Any) -> ObservabilityConfig:
    path = f"{NAMESPACE}:observability"
    m = _obj(
        value,
        path,
        (
            "prometheusImage",
            "grafanaImage",
            "jaegerImage",
            "retention",
            "scrapeInterval",
            "prometheusStorageSize",
            "prometheusResources",
            "grafanaResources",
            "jaegerResources",
            "kubeStateMetricsImage",
            "pushgatewayImage",
        ),
    )
    return ObservabilityConfig(
        prometheus_image=_pinned_image(m, "prometheusImage", path, DEFAULT_IMAGES["prometheus"]),
        grafana_image=_pinned_image(m, "grafanaImage", path, DEFAULT_IMAGES["grafana"]),
        jaeger_image=_pinned_image(m, "jaegerImage", path, DEFAULT_IMAGES["jaeger"]),
        retention=_str(m, "retention", path, "15d", _RETENTION, 'a retention such as "15d"'),
        scrape_interval_s=_duration(m, "scrapeInterval", path, "15s", 1, 300),
        prometheus_storage_size=_str(
            m, "prometheusStorageSize", path, "20Gi", _MEMORY, 'a size such as "20Gi"'
        ),
        prometheus_resources=Resources.parse(
            m.get("prometheusResources"), f"{path}.prometheusResources", _PROM_RES
        ),
        grafana_resources=Resources.parse(
            m.get("grafanaResources"), f"{path}.grafanaResources", _GRAFANA_RES
        ),
        jaeger_resources=Resources.parse(
            m.get("jaegerResources"), f"{path}.jaegerResources", _JAEGER_RES
        ),
        kube_state_metrics_image=_pinned_image(
            m, "kubeStateMetricsImage", path, DEFAULT_IMAGES["kubeStateMetrics"]
        ),
        pushgateway_image=_pinned_image(m, "pushgatewayImage", path, DEFAULT_IMAGES["pushgateway"]),
    )


def _parse_slo(value: Any) -> Slo:
    path = f"{NAMESPACE}:slo"
    m = _obj(value, path, ("maxErrorRate", "maxP95Ms"))
    return Slo(
        max_error_rate=_float(m, "maxErrorRate", path, 0.01, 0.0, 0.5, lo_open=True),
        max_p95_ms=_float(m, "maxP95Ms", path, 500.0, 1.0, 60000.0),
    )


def parse_steps(value: Any, path: str = f"{NAMESPACE}:canary.steps") -> tuple[Step, ...]:
    """Steps from ``[{weight: 10, analysis: "5m"}, {pause: true}, ...]``.

    Weights must increase strictly and stay within 0 < weight <= 100.
    """
    if value is None:
        return DEFAULT_STEPS
    if not isinstance(value, list) or not value:
        raise ConfigError(path, value, "expected a non-empty list of steps")
    steps: list[Step] = []
    last = 0
    for i, raw in enumerate(value):
        spath = f"{path}[{i}]"
        if isinstance(raw, Mapping) and "pause" in raw:
            m = _obj(raw, spath, ("pause",))
            if m["pause"] is not True:
                raise ConfigError(
                    f"{spath}.pause",
                    m["pause"],
                    "expected true (wait for `portalctl release promote`)",
                )
            steps.append(Step(None, 0.0, pause=True))
            continue
        m = _obj(raw, spath, ("weight", "analysis"))
        if "weight" not in m:
            raise ConfigError(spath, raw, 'expected {weight: N, analysis: "5m"} or {pause: true}')
        weight = m["weight"]
        if isinstance(weight, float) and weight.is_integer():
            weight = int(weight)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 100:
            raise ConfigError(f"{spath}.weight", weight, "not a percentage (0 < weight <= 100)")
        if weight <= last:
            raise ConfigError(
                f"{spath}.weight",
                weight,
                f"weights must increase from step to step (previous was {last})",
            )
        last = weight
        analysis = _duration(m, "analysis", spath, "5m", 1, 86400)
        steps.append(Step(weight, analysis))
    if all(s.pause for s in steps):
        raise ConfigError(path, value, "expected at least one weight step")
    return tuple(steps)


def _parse_policy(
    value: Any, path: str, default: VerdictPolicy, thens: Sequence[str]
) -> VerdictPolicy:
    m = _obj(value, path, ("limit", "then"))
    return VerdictPolicy(
        limit_s=_duration(m, "limit", path, default.limit_s, 0, 86400),
        then=_choice(m, "then", path, default.then, thens),  # type: ignore[arg-type]
    )


def _parse_canary(value: Any) -> CanaryConfig:
    path = f"{NAMESPACE}:canary"
    m = _obj(
        value,
        path,
        (
            "steps",
            "interval",
            "settle",
            "minRequests",
            "maxErrorRateIncrease",
            "maxP95Ratio",
            "minP95IncreaseMs",
            "alpha",
            "confidence",
            "healthFailures",
            "onInsufficientData",
            "onProviderError",
            "leaseTtl",
        ),
    )
    if "confidence" in m:
        raise ConfigError(
            f"{path}.confidence",
            m["confidence"],
            "removed: the gates now hold the false-rollback probability of the whole release "
            "to portal:canary.alpha (default 0.01); replace it with alpha: 1 - confidence",
        )
    steps = parse_steps(m.get("steps"), f"{path}.steps")
    interval = _duration(m, "interval", path, "10s", 0.1, 600)
    for i, step in enumerate(steps):
        if not step.pause and step.analysis_s < interval:
            raise ConfigError(
                f"{path}.steps[{i}].analysis",
                step.analysis_s,
                f"expected at least one check interval ({interval:g}s)",
            )
    return CanaryConfig(
        steps=steps,
        interval_s=interval,
        settle_s=_duration(m, "settle", path, "15s", 0, 600),
        min_requests=_int(m, "minRequests", path, 100, 1, 10_000_000),
        max_error_rate_increase=_float(m, "maxErrorRateIncrease", path, 0.01, 0.0, 1.0),
        max_p95_ratio=_float(m, "maxP95Ratio", path, 1.5, 1.0, 100.0, lo_open=True),
        min_p95_increase_ms=_float(m, "minP95IncreaseMs", path, 50.0, 0.0, 60000.0),
        alpha=_float(m, "alpha", path, 0.01, 0.0, 0.5, lo_open=True),
        health_failures=_int(m, "healthFailures", path, 2, 1, 100),
        on_insufficient_data=_parse_policy(
            m.get("onInsufficientData"),
            f"{path}.onInsufficientData",
            VerdictPolicy(600.0, "hold"),
            ("fail", "hold"),
        ),
        on_provider_error=_parse_policy(
            m.get("onProviderError"),
            f"{path}.onProviderError",
            VerdictPolicy(120.0, "abort"),
            ("hold", "abort"),
        ),
        lease_ttl_s=_duration(m, "leaseTtl", path, "60s", 1, 3600),
    )


def _parse_alerts(value: Any) -> AlertsConfig:
    path = f"{NAMESPACE}:alerts"
    m = _obj(
        value,
        path,
        (
            "cacheHitRateMin",
            "slowQueryMs",
            "pgConnectionsMaxRatio",
            "redisMemoryMaxRatio",
            "for",
            "runbookBaseUrl",
        ),
    )
    for_duration = m.get("for", "5m")
    parse_duration(for_duration, f"{path}.for")
    if not isinstance(for_duration, str):
        raise ConfigError(f"{path}.for", for_duration, 'expected a duration string such as "5m"')
    return AlertsConfig(
        cache_hit_rate_min=_float(m, "cacheHitRateMin", path, 0.7, 0.0, 1.0),
        slow_query_ms=_float(m, "slowQueryMs", path, 250.0, 1.0, 600000.0),
        pg_connections_max_ratio=_float(
            m, "pgConnectionsMaxRatio", path, 0.8, 0.0, 1.0, lo_open=True
        ),
        redis_memory_max_ratio=_float(m, "redisMemoryMaxRatio", path, 0.9, 0.0, 1.0, lo_open=True),
        for_duration=for_duration,
        runbook_base_url=_runbook_base_url(m, path),
    )


def _runbook_base_url(m: Mapping[str, Any], path: str) -> str:
    value = m.get("runbookBaseUrl", DEFAULT_RUNBOOK_BASE_URL)
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+(/[^\s]*)?$", value):
        raise ConfigError(
            f"{path}.runbookBaseUrl",
            value,
            "expected an http(s) URL of the folder holding the runbooks",
        )
    return value.rstrip("/")


def parse_config(values: Mapping[str, Any], stack: str) -> StackConfig:
    """The validated model from the stack's ``portal:`` values (keys without the prefix).

    Object values may be given as JSON strings (as ``pulumi.Config`` stores them).
    """
    if not isinstance(stack, str) or not _DNS_LABEL.match(stack):
        raise ConfigError("stack", stack, "expected a stack name made of a-z, 0-9 and '-'")
    decoded: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in TOP_LEVEL_KEYS:
            near = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            hint = f" (did you mean {NAMESPACE}:{near[0]}?)" if near else ""
            raise ConfigError(
                f"{NAMESPACE}:{key}",
                raw,
                f"unknown key{hint}; known keys: {', '.join(TOP_LEVEL_KEYS)}",
            )
        decoded[key] = _decode(raw)
    if "app" not in decoded:
        raise ConfigError(
            f"{NAMESPACE}:app", None, "required: a mapping with at least image and version"
        )
    # Empty reads as unset: it is the default Pulumi.yaml declares for an optional key, which the
    # engine passes to the program when the stack leaves the key out (no default: the engine
    # would require the key in every stack).
    environment = _unless_empty(decoded.get("environment"), stack)
    if not isinstance(environment, str) or not _DNS_LABEL.match(environment):
        raise ConfigError(f"{NAMESPACE}:environment", environment, "expected a DNS label")
    namespace = _unless_empty(decoded.get("namespace"), f"portal-{stack}")
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise ConfigError(
            f"{NAMESPACE}:namespace",
            namespace,
            "expected a Kubernetes namespace name (DNS label, max 63 chars)",
        )
    dsn = decoded.get("sentryDsn")
    if (
        dsn is not None
        and not isinstance(dsn, str)
        and not (isinstance(dsn, Mapping) and set(dsn) == {"secure"})
    ):
        raise ConfigError(
            f"{NAMESPACE}:sentryDsn",
            dsn,
            "expected a secret string (pulumi config set --secret portal:sentryDsn https://...)",
        )
    return StackConfig(
        stack=stack,
        environment=environment,
        namespace=namespace,
        app=_parse_app(decoded["app"]),
        traffic=_parse_traffic(decoded.get("traffic"), stack),
        postgres=_parse_postgres(decoded.get("postgres")),
        redis=_parse_redis(decoded.get("redis")),
        migrations=_parse_migrations(decoded.get("migrations")),
        observability=_parse_observability(decoded.get("observability")),
        slo=_parse_slo(decoded.get("slo")),
        canary=_parse_canary(decoded.get("canary")),
        alerts=_parse_alerts(decoded.get("alerts")),
        sentry_enabled=dsn not in (None, ""),
    )


def _unless_empty(value: Any, default: str) -> Any:
    return default if value is None or value == "" else value


def _decode(raw: Any) -> Any:
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


# --------------------------------------------------------------------------------------------
# Stack files.
# --------------------------------------------------------------------------------------------


def stack_file(stack: str, project_dir: Path | str = ".") -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


def read_stack_values(path: Path) -> dict[str, Any]:
    """The ``portal:`` values of a ``Pulumi.<stack>.yaml`` (prefix stripped).

    Secure values (``{secure: ...}``) are kept as an opaque marker: the model only records that
    they are set. Keys of other namespaces (``kubernetes:context``...) are ignored.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), None, "the stack file does not exist") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"the file is not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(str(path), None, "expected a mapping with a `config:` key")
    config = doc.get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: config", config, "expected a mapping of portal:<key> values")
    values: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        ns, _, name = key.partition(":")
        if ns == NAMESPACE and name:
            values[name] = value
    return values


def load_stack(stack: str, project_dir: Path | str = ".") -> StackConfig:
    """The validated model of ``Pulumi.<stack>.yaml`` in ``project_dir``."""
    return parse_config(read_stack_values(stack_file(stack, project_dir)), stack)


def model_fields(cls: type[Any]) -> list[str]:
    """Field names of a config dataclass (for docs and the config-reference check)."""
    return [f.name for f in fields(cls)]
