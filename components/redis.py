"""Redis, the portal's cache: a Deployment with a redis-exporter sidecar, a Service, a Secret
holding a generated password, and a NetworkPolicy that admits only the app and Prometheus (to the
exporter).

Redis holds nothing that cannot be recomputed (the app falls back to its in-process cache while
Redis is away), so it runs without persistence on an emptyDir with ``maxmemory`` and LRU eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import kube
from contract import ports
from contract.config import RedisConfig, StackConfig
from contract.labels import API, CACHE, MONITORING, selector, standard_labels

PORT = ports.REDIS
UID = 999
"""The redis user of the official alpine image."""
GID = 1000
EXPORTER_UID = 59000
PASSWORD_KEY = "REDIS_PASSWORD"  # noqa: S105 - a key name


@dataclass(frozen=True)
class RedisArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""


class Redis(pulumi.ComponentResource):
    """The stack's cache."""

    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    secret: k8s.core.v1.Secret
    network_policy: k8s.networking.v1.NetworkPolicy
    host: pulumi.Output[str]
    password: pulumi.Output[str]
    """The generated password (a secret Output)."""

    def __init__(
        self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:redis:Redis", name, None, opts)
        cfg = args.config
        rd = cfg.redis
        names = cfg.names
        child = pulumi.ResourceOptions(parent=self)
        labels = standard_labels(cfg, names.redis, CACHE, kube.image_tag(rd.image))
        match = selector(names.redis, CACHE)

        password = random.RandomPassword(f"{name}-password", length=32, special=False, opts=child)
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=kube.metadata(f"{names.redis}-auth", args.namespace, labels),
            type="Opaque",
            string_data={PASSWORD_KEY: password.result},
            opts=child,
        )
        secret_name = self.secret.metadata.name

        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=kube.metadata(names.redis, args.namespace, labels),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        security_context=kube.pod_security(UID, GID),
                        automount_service_account_token=False,
                        enable_service_links=False,
                        containers=_containers(rd, secret_name),
                        volumes=[kube.empty_dir("data")],
                    ),
                ),
            ),
            opts=child,
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=kube.metadata(names.redis, args.namespace, labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector=self.deployment.spec.selector.match_labels,
                ports=[
                    kube.service_port("redis", PORT, "redis"),
                    kube.service_port("metrics", ports.REDIS_EXPORTER, "metrics"),
                ],
            ),
            opts=child,
        )
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata=kube.metadata(names.redis, args.namespace, labels),
            spec=kube.admit(
                match,
                kube.ingress_from([selector(names.app, API)], [PORT]),
                kube.ingress_from([selector(names.prometheus, MONITORING)], [ports.REDIS_EXPORTER]),
            ),
            opts=child,
        )

        self.host = self.service.metadata.name
        self.password = password.result
        self.register_outputs(
            {
                "host": self.host,
                "port": PORT,
                "secretName": secret_name,
                "deployment": self.deployment.metadata.name,
            }
        )


def _containers(rd: RedisConfig, secret_name: pulumi.Input[str]) -> list[k8s.core.v1.ContainerArgs]:
    """Redis and its exporter sidecar."""
    redis = k8s.core.v1.ContainerArgs(
        name="redis",
        image=rd.image,
        command=["redis-server"],
        # $(REDIS_PASSWORD) is expanded by the kubelet from the env below.
        args=[
            "--requirepass",
            f"$({PASSWORD_KEY})",
            "--maxmemory",
            rd.max_memory,
            "--maxmemory-policy",
            "allkeys-lru",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/data",
        ],
        ports=[kube.port("redis", PORT)],
        env=[
            kube.env_from_secret(PASSWORD_KEY, secret_name, PASSWORD_KEY),
            # redis-cli (the readiness probe) authenticates with this.
            kube.env_from_secret("REDISCLI_AUTH", secret_name, PASSWORD_KEY),
        ],
        resources=kube.resources(rd.resources),
        readiness_probe=kube.exec_probe(
            ["sh", "-c", f"redis-cli -h 127.0.0.1 -p {PORT} ping | grep -q PONG"], period=5
        ),
        liveness_probe=kube.tcp_probe("redis", period=15, failures=4),
        security_context=kube.container_security(),
        volume_mounts=[kube.mount("data", "/data")],
    )
    exporter = kube.exporter(
        "redis-exporter",
        rd.exporter_image,
        ports.REDIS_EXPORTER,
        [
            kube.env("REDIS_ADDR", f"redis://127.0.0.1:{PORT}"),
            kube.env_from_secret("REDIS_PASSWORD", secret_name, PASSWORD_KEY),
        ],
        "/health",
        EXPORTER_UID,
    )
    return [redis, exporter]
