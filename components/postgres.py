"""PostgreSQL: a StatefulSet with a volume claim, a postgres-exporter sidecar, a Service, a Secret
holding a generated password, and a NetworkPolicy that admits only the app, the migration Job and
Prometheus (to the exporter)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import kube
from contract import ports
from contract.config import PostgresConfig, StackConfig
from contract.labels import API, DATABASE, MIGRATION, MONITORING, selector, standard_labels
from contract.names import (
    POSTGRES_DATABASE_KEY as DATABASE_KEY,
)
from contract.names import (
    POSTGRES_PASSWORD_KEY as PASSWORD_KEY,
)
from contract.names import (
    POSTGRES_USER_KEY as USER_KEY,
)

PORT = ports.POSTGRES
UID = ports.POSTGRES_UID
EXPORTER_UID = 65534
DATA_DIR = "/var/lib/postgresql/data"


@dataclass(frozen=True)
class PostgresArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""


class Postgres(pulumi.ComponentResource):
    """The stack's database."""

    statefulset: k8s.apps.v1.StatefulSet
    service: k8s.core.v1.Service
    secret: k8s.core.v1.Secret
    network_policy: k8s.networking.v1.NetworkPolicy
    host: pulumi.Output[str]
    """The Service name: how pods in the namespace reach the database."""
    password: pulumi.Output[str]
    """The generated password (a secret Output)."""
    secret_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:postgres:Postgres", name, None, opts)
        cfg = args.config
        pg = cfg.postgres
        names = cfg.names
        child = pulumi.ResourceOptions(parent=self)
        labels = standard_labels(cfg, names.postgres, DATABASE, kube.image_tag(pg.image))
        match = selector(names.postgres, DATABASE)

        password = random.RandomPassword(f"{name}-password", length=32, special=False, opts=child)
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=kube.metadata(names.postgres_secret, args.namespace, labels),
            type="Opaque",
            string_data={
                USER_KEY: pg.user,
                PASSWORD_KEY: password.result,
                DATABASE_KEY: pg.database,
            },
            opts=child,
        )
        secret_name = self.secret.metadata.name

        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=kube.metadata(names.postgres, args.namespace, labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector=match,
                ports=[
                    kube.service_port("postgres", PORT, "postgres"),
                    kube.service_port("metrics", ports.POSTGRES_EXPORTER, "metrics"),
                ],
            ),
            opts=child,
        )

        self.statefulset = self._statefulset(name, args, labels, match, secret_name)

        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata=kube.metadata(names.postgres, args.namespace, labels),
            # Only the app and the migration Job reach the database; Prometheus its exporter.
            spec=kube.admit(
                match,
                kube.ingress_from(
                    [selector(names.app, API), selector(names.app, MIGRATION)], [PORT]
                ),
                kube.ingress_from(
                    [selector(names.prometheus, MONITORING)], [ports.POSTGRES_EXPORTER]
                ),
            ),
            opts=child,
        )

        self.host = self.service.metadata.name
        self.password = password.result
        self.secret_name = secret_name
        statefulset = self.statefulset.metadata.name
        outputs = {"host": self.host, "port": PORT, "secretName": secret_name}
        self.register_outputs({**outputs, "statefulSet": statefulset})

    def _statefulset(
        self,
        name: str,
        args: PostgresArgs,
        labels: dict[str, str],
        match: dict[str, str],
        secret_name: pulumi.Input[str],
    ) -> k8s.apps.v1.StatefulSet:
        pg = args.config.postgres
        return k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=kube.metadata(args.config.names.postgres, args.namespace, labels),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                replicas=1,
                service_name=self.service.metadata.name,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                persistent_volume_claim_retention_policy=(
                    k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
                        when_deleted="Retain", when_scaled="Retain"
                    )
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=_pod(pg, secret_name),
                ),
                volume_claim_templates=[
                    k8s.core.v1.PersistentVolumeClaimArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(name="data", labels=labels),
                        spec=_claim(pg),
                    )
                ],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )


def _containers(
    pg: PostgresConfig, secret_name: pulumi.Input[str]
) -> list[k8s.core.v1.ContainerArgs]:
    """Postgres and its exporter sidecar."""
    ready = [
        "pg_isready",
        "--host=127.0.0.1",
        f"--port={PORT}",
        f"--username={pg.user}",
        f"--dbname={pg.database}",
    ]
    postgres = k8s.core.v1.ContainerArgs(
        name="postgres",
        image=pg.image,
        args=[
            "-c",
            f"max_connections={pg.max_connections}",
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ],
        ports=[kube.port("postgres", PORT)],
        env=[
            kube.env_from_secret(USER_KEY, secret_name, USER_KEY),
            kube.env_from_secret(PASSWORD_KEY, secret_name, PASSWORD_KEY),
            kube.env_from_secret(DATABASE_KEY, secret_name, DATABASE_KEY),
            kube.env("PGDATA", f"{DATA_DIR}/pgdata"),
        ],
        resources=kube.resources(pg.resources),
        # initdb on a new volume takes a while: the startup probe covers it.
        startup_probe=kube.exec_probe(ready, period=5, failures=60),
        readiness_probe=kube.exec_probe(ready, period=10),
        liveness_probe=kube.exec_probe(ready, period=20, failures=6),
        security_context=kube.container_security(),
        volume_mounts=[
            kube.mount("data", DATA_DIR),
            kube.mount("run", "/var/run/postgresql"),
            kube.mount("tmp", "/tmp"),  # noqa: S108 - an emptyDir, private to the pod
        ],
    )
    exporter = kube.exporter(
        "postgres-exporter",
        pg.exporter_image,
        ports.POSTGRES_EXPORTER,
        [
            kube.env("DATA_SOURCE_URI", f"127.0.0.1:{PORT}/{pg.database}?sslmode=disable"),
            kube.env_from_secret("DATA_SOURCE_USER", secret_name, USER_KEY),
            kube.env_from_secret("DATA_SOURCE_PASS", secret_name, PASSWORD_KEY),
        ],
        "/",
        EXPORTER_UID,
    )
    return [postgres, exporter]


def _claim(pg: PostgresConfig) -> k8s.core.v1.PersistentVolumeClaimSpecArgs:
    return k8s.core.v1.PersistentVolumeClaimSpecArgs(
        access_modes=["ReadWriteOnce"],
        storage_class_name=pg.storage_class,
        resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": pg.storage_size}),
    )


def _pod(pg: PostgresConfig, secret_name: pulumi.Input[str]) -> k8s.core.v1.PodSpecArgs:
    return k8s.core.v1.PodSpecArgs(
        security_context=kube.pod_security(UID),
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=60,
        containers=_containers(pg, secret_name),
        volumes=[kube.empty_dir("run", "16Mi"), kube.empty_dir("tmp", "256Mi")],
    )
