"""Redis, the portal's cache: a Deployment with a redis-exporter sidecar, a Service, and a Secret
holding the ACL file (no default user; ``portal_app`` for the service, ``portal_exporter`` for the
exporter and the probes, ``contract.access``) and the generated passwords, all read as files.

Redis holds nothing that cannot be recomputed (the app falls back to its in-process cache while
Redis is away), so it runs without persistence on an emptyDir with ``maxmemory`` and LRU eviction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import kube
from contract import access, ports, security
from contract.config import RedisConfig, StackConfig
from contract.labels import CACHE, selector, standard_labels
from contract.names import REDIS_EXPORTER_USER

PORT = ports.REDIS
UID = 10999
"""Any uid runs the official image; a high one stays clear of the node's users."""
GID = 10999
EXPORTER_UID = 59000
AUTH_DIR = "/var/run/secrets/redis"


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
    host: pulumi.Output[str]
    password: pulumi.Output[str]
    """The app user's generated password (a secret Output)."""

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
        exporter_password = random.RandomPassword(
            f"{name}-exporter-password", length=32, special=False, opts=child
        ).result
        self.secret = _acl_secret(
            f"{name}-secret",
            kube.metadata(names.redis_secret, args.namespace, labels),
            password.result,
            exporter_password,
            child,
        )
        secret_name = self.secret.metadata.name

        skips = security.skips(security.unpinned(rd.image, rd.exporter_image)) or None
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=kube.metadata(names.redis, args.namespace, labels, skips),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    # The ACL file is read at start: a new one rolls the pod.
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=labels,
                        annotations={
                            "checksum/acl": pulumi.Output.all(
                                password.result, exporter_password
                            ).apply(lambda p: access.checksum(*p))
                        },
                    ),
                    spec=k8s.core.v1.PodSpecArgs(
                        security_context=kube.pod_security(UID, GID),
                        automount_service_account_token=False,
                        enable_service_links=False,
                        containers=_containers(rd),
                        volumes=[kube.empty_dir("data"), kube.secret_volume("auth", secret_name)],
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


def _acl_secret(
    resource: str,
    metadata: k8s.meta.v1.ObjectMetaArgs,
    password: pulumi.Output[str],
    exporter_password: pulumi.Output[str],
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.Secret:
    """The ACL file and the generated passwords, as the server, the app and the exporter read
    them (the exporter's as a password file keyed by the address it scrapes)."""
    address = f"redis://127.0.0.1:{PORT}"
    return k8s.core.v1.Secret(
        resource,
        metadata=metadata,
        type="Opaque",
        string_data={
            access.REDIS_ACL_FILE: pulumi.Output.all(password, exporter_password).apply(
                lambda p: access.redis_acl(p[0], p[1])
            ),
            access.REDIS_APP_PASSWORD_KEY: password,
            access.REDIS_EXPORTER_PASSWORD_KEY: exporter_password,
            access.REDIS_EXPORTER_PASSWORD_FILE: exporter_password.apply(
                lambda p: json.dumps({address: p})
            ),
        },
        opts=opts,
    )


def _containers(rd: RedisConfig) -> list[k8s.core.v1.ContainerArgs]:
    """Redis and its exporter sidecar."""
    probe_auth = (
        f'REDISCLI_AUTH="$(cat {AUTH_DIR}/{access.REDIS_EXPORTER_PASSWORD_KEY})" '
        f"redis-cli --no-auth-warning --user {REDIS_EXPORTER_USER} -h 127.0.0.1 -p {PORT}"
    )
    redis = k8s.core.v1.ContainerArgs(
        name="redis",
        image=rd.image,
        image_pull_policy=kube.pull_policy(rd.image),
        command=["redis-server"],
        args=[
            "--aclfile",
            f"{AUTH_DIR}/{access.REDIS_ACL_FILE}",
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
        resources=kube.resources(rd.resources),
        readiness_probe=kube.exec_probe(
            ["sh", "-c", f"{probe_auth} ping | grep -q PONG"], period=5
        ),
        liveness_probe=kube.tcp_probe("redis", period=15, failures=4),
        security_context=kube.container_security(),
        volume_mounts=[kube.mount("data", "/data"), kube.mount("auth", AUTH_DIR, read_only=True)],
    )
    exporter = kube.exporter(
        "redis-exporter",
        rd.exporter_image,
        ports.REDIS_EXPORTER,
        [
            kube.env("REDIS_ADDR", f"redis://127.0.0.1:{PORT}"),
            kube.env("REDIS_USER", REDIS_EXPORTER_USER),
            kube.env("REDIS_PASSWORD_FILE", f"{AUTH_DIR}/{access.REDIS_EXPORTER_PASSWORD_FILE}"),
        ],
        "/health",
        EXPORTER_UID,
        [kube.mount("auth", AUTH_DIR, read_only=True)],
    )
    return [redis, exporter]
