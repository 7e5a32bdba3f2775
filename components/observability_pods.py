"""The containers of the observability stack, built from the config model."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components import dashboards, kube
from contract import alertmanager as am
from contract import ports, prometheus_config
from contract.config import StackConfig

GRAFANA_PORT = 3000
JAEGER_UI_PORT = 16686
JAEGER_OTLP_GRPC_PORT = 4317
JAEGER_OTLP_HTTP_PORT = 4318
JAEGER_ADMIN_PORT = 14269
KSM_TELEMETRY_PORT = 8081

KSM_RESOURCES = ("deployments", "jobs", "pods", "replicasets", "statefulsets")
"""What kube-state-metrics reports on (and what its Role may list and watch)."""

PASSWORD_KEY = "admin-password"  # noqa: S105 - a key name
USER_KEY = "admin-user"
GRAFANA_ADMIN_DIR = "/etc/grafana/admin"


def prometheus(cfg: StackConfig, retention_size: str | None) -> k8s.core.v1.ContainerArgs:
    obs = cfg.observability
    names = cfg.names
    args = [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        f"--storage.tsdb.retention.time={obs.retention}",
        f"--web.listen-address=:{names.prometheus_port}",
        # No --web.enable-lifecycle (anyone who reaches the port could stop it): a new
        # configuration rolls the pod (its template carries the configuration's checksum).
    ]
    if retention_size:
        args.append(f"--storage.tsdb.retention.size={retention_size}")
    return k8s.core.v1.ContainerArgs(
        name="prometheus",
        image=obs.prometheus_image,
        image_pull_policy=kube.pull_policy(obs.prometheus_image),
        args=args,
        ports=[kube.port("web", names.prometheus_port)],
        resources=kube.resources(obs.prometheus_resources),
        startup_probe=kube.http_probe("/-/ready", "web", period=5, failures=60),
        readiness_probe=kube.http_probe("/-/ready", "web", period=10),
        liveness_probe=kube.http_probe("/-/healthy", "web", period=20, failures=6),
        security_context=kube.container_security(),
        volume_mounts=[
            kube.mount("config", "/etc/prometheus", read_only=True),
            kube.mount("data", "/prometheus"),
            kube.mount("scrape", prometheus_config.SCRAPE_TOKEN_DIR, read_only=True),
        ],
    )


def pushgateway(cfg: StackConfig) -> k8s.core.v1.ContainerArgs:
    names = cfg.names
    image = cfg.observability.pushgateway_image
    return k8s.core.v1.ContainerArgs(
        name="pushgateway",
        image=image,
        image_pull_policy=kube.pull_policy(image),
        args=[
            f"--web.listen-address=:{names.pushgateway_port}",
            # Release events survive a container restart (not a new pod: the alert is
            # about the last hour, and portalctl's ledger keeps the full history).
            "--persistence.file=/data/pushgateway.db",
            "--persistence.interval=1m",
        ],
        ports=[kube.port("http", names.pushgateway_port)],
        resources=kube.resources(kube.SIDECAR_RESOURCES),
        readiness_probe=kube.http_probe("/-/ready", "http"),
        liveness_probe=kube.http_probe("/-/healthy", "http", period=20, failures=6),
        security_context=kube.container_security(),
        volume_mounts=[kube.mount("data", "/data")],
    )


ALERTMANAGER_CONFIG_DIR = "/etc/alertmanager"


def alertmanager(cfg: StackConfig) -> k8s.core.v1.ContainerArgs:
    names = cfg.names
    return k8s.core.v1.ContainerArgs(
        name="alertmanager",
        image=cfg.observability.alertmanager_image,
        image_pull_policy=kube.pull_policy(cfg.observability.alertmanager_image),
        args=[
            f"--config.file={ALERTMANAGER_CONFIG_DIR}/{am.CONFIG_FILE}",
            "--storage.path=/alertmanager",
            f"--web.listen-address=:{names.alertmanager_port}",
            # one replica: no gossip port to open (silences and the notification log are kept
            # on its volume)
            "--cluster.listen-address=",
        ],
        ports=[kube.port("http", names.alertmanager_port)],
        resources=kube.resources(kube.SIDECAR_RESOURCES),
        readiness_probe=kube.http_probe("/-/ready", "http"),
        liveness_probe=kube.http_probe("/-/healthy", "http", period=20, failures=6),
        security_context=kube.container_security(),
        volume_mounts=[
            kube.mount("config", ALERTMANAGER_CONFIG_DIR, read_only=True),
            kube.mount("data", "/alertmanager"),
        ],
    )


def kube_state_metrics(cfg: StackConfig) -> k8s.core.v1.ContainerArgs:
    image = cfg.observability.kube_state_metrics_image
    port = ports.KUBE_STATE_METRICS
    return k8s.core.v1.ContainerArgs(
        name="kube-state-metrics",
        image=image,
        image_pull_policy=kube.pull_policy(image),
        args=[
            f"--port={port}",
            f"--telemetry-port={KSM_TELEMETRY_PORT}",
            f"--namespaces={cfg.namespace}",
            f"--resources={','.join(KSM_RESOURCES)}",
        ],
        ports=[kube.port("http-metrics", port), kube.port("telemetry", KSM_TELEMETRY_PORT)],
        resources=kube.resources(kube.SIDECAR_RESOURCES),
        readiness_probe=kube.http_probe("/readyz", "telemetry"),
        liveness_probe=kube.http_probe("/livez", "http-metrics", period=20, failures=6),
        security_context=kube.container_security(),
    )


def jaeger(cfg: StackConfig) -> k8s.core.v1.ContainerArgs:
    obs = cfg.observability
    return k8s.core.v1.ContainerArgs(
        name="jaeger",
        image=obs.jaeger_image,
        image_pull_policy=kube.pull_policy(obs.jaeger_image),
        args=["--memory.max-traces=50000"],
        env=[
            kube.env("SPAN_STORAGE_TYPE", "memory"),
            kube.env("COLLECTOR_OTLP_ENABLED", "true"),
        ],
        ports=[
            kube.port("ui", JAEGER_UI_PORT),
            kube.port("otlp-grpc", JAEGER_OTLP_GRPC_PORT),
            kube.port("otlp-http", JAEGER_OTLP_HTTP_PORT),
            kube.port("admin", JAEGER_ADMIN_PORT),
        ],
        resources=kube.resources(obs.jaeger_resources),
        readiness_probe=kube.http_probe("/", "admin"),
        liveness_probe=kube.http_probe("/", "admin", period=20, failures=6),
        security_context=kube.container_security(),
        volume_mounts=[kube.mount("tmp", "/tmp")],  # noqa: S108 - an emptyDir
    )


def grafana(cfg: StackConfig, admin_user: str) -> k8s.core.v1.ContainerArgs:
    obs = cfg.observability
    home = f"{dashboards.DASHBOARD_MOUNT}/{dashboards.DASHBOARD_FILES[0]}"
    return k8s.core.v1.ContainerArgs(
        name="grafana",
        image=obs.grafana_image,
        image_pull_policy=kube.pull_policy(obs.grafana_image),
        env=[
            kube.env("GF_SECURITY_ADMIN_USER", admin_user),
            kube.env("GF_SECURITY_ADMIN_PASSWORD__FILE", f"{GRAFANA_ADMIN_DIR}/{PASSWORD_KEY}"),
            kube.env("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning"),
            kube.env("GF_PATHS_DATA", "/var/lib/grafana"),
            kube.env("GF_LOG_MODE", "console"),
            kube.env("GF_USERS_ALLOW_SIGN_UP", "false"),
            kube.env("GF_ANALYTICS_REPORTING_ENABLED", "false"),
            kube.env("GF_ANALYTICS_CHECK_FOR_UPDATES", "false"),
            kube.env("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", home),
        ],
        ports=[kube.port("http", GRAFANA_PORT)],
        resources=kube.resources(obs.grafana_resources),
        readiness_probe=kube.http_probe("/api/health", "http"),
        liveness_probe=kube.http_probe("/api/health", "http", period=20, failures=6),
        security_context=kube.container_security(),
        volume_mounts=[
            kube.mount("provisioning", "/etc/grafana/provisioning", read_only=True),
            kube.mount("dashboards", dashboards.DASHBOARD_MOUNT, read_only=True),
            kube.mount("data", "/var/lib/grafana"),
            kube.mount("tmp", "/tmp"),  # noqa: S108 - an emptyDir
            kube.mount("admin", GRAFANA_ADMIN_DIR, read_only=True),
        ],
    )


def grafana_provisioning(config_map: pulumi.Input[str]) -> k8s.core.v1.VolumeArgs:
    """The datasources and the dashboard provider where Grafana looks for them."""
    return k8s.core.v1.VolumeArgs(
        name="provisioning",
        config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
            name=config_map,
            items=[
                k8s.core.v1.KeyToPathArgs(
                    key="datasources.yaml", path="datasources/datasources.yaml"
                ),
                k8s.core.v1.KeyToPathArgs(key="dashboards.yaml", path="dashboards/dashboards.yaml"),
            ],
        ),
    )
