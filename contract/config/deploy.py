"""The sections of what a stack deploys: the service, its traffic split, Postgres, Redis, the
migration Job and the observability stack."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from contract.config.base import (
    APP_RESOURCES,
    GRAFANA_RESOURCES,
    JAEGER_RESOURCES,
    POSTGRES_RESOURCES,
    PROMETHEUS_RESOURCES,
    REDIS_RESOURCES,
    Derived,
    Resources,
    Section,
    merged_over,
)
from contract.config.errors import ConfigError
from contract.config.types import (
    Bucket,
    Cidr,
    ClassName,
    Duration,
    Flag,
    Host,
    HttpUrl,
    ImageRepository,
    ImageTag,
    KeyId,
    LabelKey,
    LabelValue,
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
from contract.names import NAMESPACE


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
    response_headers: Flag = Field(
        default=True,
        description="X-Response-Time-Ms, X-Cache-Hit and X-Query-Count on every response; false "
        "keeps them from clients and a cache-warm read about 4% of its instructions "
        "(PORTAL_RESPONSE_HEADERS)",
    )
    db_statement_timeout_ms: Whole = Field(
        default=5000,
        ge=0,
        le=3_600_000,
        description="Postgres statement_timeout of the service's connections, 0 none "
        "(PORTAL_DB_STATEMENT_TIMEOUT_MS)",
    )
    db_lock_timeout_ms: Whole = Field(
        default=1000,
        ge=0,
        le=3_600_000,
        description="Postgres lock_timeout of the service's connections, 0 none "
        "(PORTAL_DB_LOCK_TIMEOUT_MS)",
    )
    auth_key_ids: list[KeyId] = Field(
        default_factory=lambda: ["k1"],
        min_length=1,
        max_length=4,
        description="ids of the keys that sign the API's tokens, newest first: the first signs, "
        "all verify; to rotate, put a new id first, then drop the old one once its tokens expired",
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
        ids = self.auth_key_ids
        for i, kid in enumerate(ids):
            if kid in ids[:i]:
                raise ConfigError(f"{path}.authKeyIds[{i}]", kid, "expected each key id once")
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
    "alertmanager": "prom/alertmanager:v0.27.0",
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
    """Prometheus, Alertmanager, Grafana, Jaeger, kube-state-metrics and the Pushgateway; every
    image pinned by tag."""

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
    alertmanager_image: PinnedImage = Field(
        default=DEFAULT_IMAGES["alertmanager"],
        description="routes the alerts to the receivers of portal:alerts",
    )


def _within(net: ipaddress.IPv4Network | ipaddress.IPv6Network, of: Any) -> bool:
    return bool(net.version == of.version and net.subnet_of(of))


PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


class NetworkConfig(Section):
    """The namespace denies every connection in and out except the flows of the README's table
    (NetworkPolicies); these keys say where the peers outside the namespace are."""

    api_server_cidrs: tuple[Cidr, ...] = Field(
        default=PRIVATE_NETWORKS,
        min_length=1,
        description="where the Kubernetes API server connects from (its pod and service proxy: "
        "portalctl's health checks, Prometheus queries and Pushgateway pushes) and is reached "
        "at; set it to your control plane's addresses; podCidrs are always excepted",
    )
    api_server_ports: tuple[Whole, ...] = Field(
        default=(443, 6443),
        min_length=1,
        description="ports Prometheus and kube-state-metrics reach the API server on",
    )
    pod_cidrs: tuple[Cidr, ...] = Field(
        default=("10.244.0.0/16",),
        min_length=1,
        description="the cluster's pod networks: excepted from every address range above, so "
        "no pod passes for the API server",
    )
    ingress_namespace: Namespace = Field(
        default="ingress-nginx", description="namespace of the ingress controller"
    )
    ingress_pod_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "ingress-nginx"},
        min_length=1,
        description="labels of the ingress controller's pods",
        json_schema_extra={"default_text": "app.kubernetes.io/name=ingress-nginx"},
    )
    dns_namespace: Namespace = Field(default="kube-system", description="namespace of the DNS")
    dns_pod_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=lambda: {"k8s-app": "kube-dns"},
        min_length=1,
        description="labels of the cluster DNS pods",
        json_schema_extra={"default_text": "k8s-app=kube-dns"},
    )
    s3_cidrs: tuple[Cidr, ...] = Field(
        default=("0.0.0.0/0",),
        min_length=1,
        description="where the pre-migration backup may upload (the S3 endpoint's addresses); "
        "podCidrs are excepted",
    )
    sentry_cidrs: tuple[Cidr, ...] = Field(
        default=("0.0.0.0/0",),
        min_length=1,
        description="where the service may send its errors when sentryDsn is set (the Sentry "
        "host's addresses); podCidrs are excepted",
    )
    receiver_cidrs: tuple[Cidr, ...] = Field(
        default=("0.0.0.0/0",),
        min_length=1,
        description="where Alertmanager may reach the receivers of portal:alerts (webhook, Slack, "
        "PagerDuty, the SMTP relay); podCidrs are excepted",
    )
    sentry_port: Whole = Field(
        default=443, ge=1, le=65535, description="the port of the Sentry DSN's host"
    )

    @model_validator(mode="after")
    def _pods_apart(self) -> NetworkConfig:
        pods = [ipaddress.ip_network(p) for p in self.pod_cidrs]
        for key, cidrs in (
            ("apiServerCidrs", self.api_server_cidrs),
            ("s3Cidrs", self.s3_cidrs),
            ("sentryCidrs", self.sentry_cidrs),
            ("receiverCidrs", self.receiver_cidrs),
        ):
            for i, cidr in enumerate(cidrs):
                net = ipaddress.ip_network(cidr)
                inside = next((p for p in pods if _within(net, p)), None)
                if inside is not None:
                    raise ConfigError(
                        f"{NAMESPACE}:network.{key}[{i}]",
                        cidr,
                        f"expected addresses outside the pod network {inside} (podCidrs): "
                        "a pod would pass for this peer",
                    )
        for i, port in enumerate(self.api_server_ports):
            if not 1 <= port <= 65535:
                raise ConfigError(
                    f"{NAMESPACE}:network.apiServerPorts[{i}]", port, "expected a port 1-65535"
                )
        return self
