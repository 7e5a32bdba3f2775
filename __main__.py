"""The Pulumi program: read and validate the stack config, build the components, export what
operators and ``portalctl`` need.

A wrong config key or value stops the program before any resource is registered, with a message
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from components.app import App, AppArgs
from components.app_env import AppEnv, AppEnvArgs
from components.migrations import Migration, MigrationArgs
from components.network import Network, NetworkArgs
from components.observability import Observability, ObservabilityArgs
from components.postgres import Postgres, PostgresArgs
from components.redis import Redis, RedisArgs
from components.stack_config import load_config
from contract.config import NAMESPACE
from contract.labels import standard_labels
from contract.names import PG_APP, PG_MIGRATOR

cfg = load_config()
names = cfg.names

namespace_resource = k8s.core.v1.Namespace(
    "namespace",
    metadata=kube.metadata(
        cfg.namespace,
        None,
        {
            **standard_labels(cfg, names.app, "namespace", None),
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        },
    ),
)
namespace = namespace_resource.metadata.name

network = Network("network", NetworkArgs(cfg, namespace))
postgres = Postgres("postgres", PostgresArgs(cfg, namespace))
redis = Redis("redis", RedisArgs(cfg, namespace))
observability = Observability("observability", ObservabilityArgs(cfg, namespace))
app_env = AppEnv(
    "app-env",
    AppEnvArgs(
        cfg,
        namespace,
        postgres.host,
        postgres.role_passwords[PG_APP],
        redis.host,
        redis.password,
        observability.scrape_token,
        sentry_dsn=pulumi.Config(NAMESPACE).get_secret("sentryDsn") if cfg.sentry_enabled else None,
    ),
)
migration = Migration(
    "migration",
    MigrationArgs(
        cfg,
        namespace,
        postgres.role_passwords[PG_MIGRATOR],
        postgres.host,
        database=postgres.roles_job,
    ),
)
app = App(
    "app",
    AppArgs(
        cfg,
        namespace,
        app_env.secret_name,
        app_env.keys,
        observability.otlp_endpoint,
        migration=migration.job,
    ),
)

pulumi.export("namespace", namespace)
pulumi.export("url", app.url)
pulumi.export("trafficMode", cfg.traffic.mode)
pulumi.export("appImage", cfg.app.image)
pulumi.export("appVersion", cfg.app.version)
pulumi.export("stableImage", cfg.app.stable_image)
pulumi.export(
    "images",
    {
        "app": cfg.app.stable_image,
        "postgres": cfg.postgres.image,
        "postgresExporter": cfg.postgres.exporter_image,
        "redis": cfg.redis.image,
        "redisExporter": cfg.redis.exporter_image,
        "prometheus": cfg.observability.prometheus_image,
        "grafana": cfg.observability.grafana_image,
        "jaeger": cfg.observability.jaeger_image,
        "kubeStateMetrics": cfg.observability.kube_state_metrics_image,
        "pushgateway": cfg.observability.pushgateway_image,
        "alertmanager": cfg.observability.alertmanager_image,
    },
)
pulumi.export("containerName", names.container)
pulumi.export("stableDeployment", app.stable.metadata.name)
pulumi.export("canaryDeployment", app.canary.metadata.name)
pulumi.export("services", {role: s.metadata.name for role, s in app.services.items()})
pulumi.export("ingress", app.ingress.metadata.name)
pulumi.export("canaryIngress", app.canary_ingress.metadata.name if app.canary_ingress else None)
pulumi.export("migrationJob", migration.job_name)
pulumi.export("appSecret", app_env.secret_name)
pulumi.export("postgresService", postgres.host)
pulumi.export("redisService", redis.host)
pulumi.export("prometheusService", observability.prometheus_service)
pulumi.export("prometheusPort", names.prometheus_port)
pulumi.export("pushgatewayService", observability.pushgateway_service)
pulumi.export("pushgatewayPort", names.pushgateway_port)
pulumi.export("alertmanagerService", observability.alertmanager_service)
pulumi.export("alertmanagerPort", names.alertmanager_port)
pulumi.export("grafanaService", observability.grafana_service)
pulumi.export("jaegerService", observability.jaeger_service)
pulumi.export("grafanaAdminPassword", observability.grafana_password)
