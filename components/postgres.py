"""PostgreSQL: a StatefulSet with a volume claim, a postgres-exporter sidecar (as the read-only
role), a Service, the superuser's Secret, the roles' Secret (generated passwords) and the Job that
creates the roles (``components.postgres_roles``). Every password reaches its pod as a file.
Who may connect is the network component's business (``contract.network``)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import kube
from components.postgres_roles import roles_job
from contract import access, ports, security
from contract.config import PostgresConfig, StackConfig
from contract.labels import DATABASE, selector, standard_labels
from contract.names import (
    PG_APP,
    PG_MIGRATOR,
    PG_READONLY,
)
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
SUPERUSER_DIR = "/var/run/secrets/postgres"
READONLY_DIR = "/var/run/secrets/postgres-readonly"


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
    roles_secret: k8s.core.v1.Secret
    roles_job: k8s.batch.v1.Job
    """Creates the roles; the migration Job waits for it."""
    host: pulumi.Output[str]
    """The Service name: how pods in the namespace reach the database."""
    password: pulumi.Output[str]
    """The superuser's generated password (a secret Output)."""
    role_passwords: dict[str, pulumi.Output[str]]
    """Role name -> its generated password (secret Outputs)."""
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
        self.role_passwords = {
            role: random.RandomPassword(
                f"{name}-{role.removeprefix('portal_')}-password",
                length=32,
                special=False,
                opts=child,
            ).result
            for role in (PG_MIGRATOR, PG_APP, PG_READONLY)
        }
        self.roles_secret = k8s.core.v1.Secret(
            f"{name}-roles-secret",
            metadata=kube.metadata(names.postgres_roles, args.namespace, labels),
            type="Opaque",
            string_data={
                access.PASSWORD_FILES[role]: password
                for role, password in self.role_passwords.items()
            },
            opts=child,
        )

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

        self.statefulset = self._statefulset(
            name, args, labels, match, secret_name, self.roles_secret.metadata.name
        )
        self.host = self.service.metadata.name
        self.roles_job = roles_job(
            name,
            cfg,
            args.namespace,
            host=self.host,
            superuser_secret=secret_name,
            roles_secret=self.roles_secret.metadata.name,
            passwords=list(self.role_passwords.values()),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.statefulset], delete_before_replace=True
            ),
        )

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
        roles_secret: pulumi.Input[str],
    ) -> k8s.apps.v1.StatefulSet:
        pg = args.config.postgres
        skips = security.skips(
            security.POSTGRES_UID, security.unpinned(pg.image, pg.exporter_image)
        )
        return k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=kube.metadata(args.config.names.postgres, args.namespace, labels, skips),
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
                    spec=_pod(pg, secret_name, roles_secret),
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


def _containers(pg: PostgresConfig) -> list[k8s.core.v1.ContainerArgs]:
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
        image_pull_policy=kube.pull_policy(pg.image),
        args=[
            "-c",
            f"max_connections={pg.max_connections}",
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ],
        ports=[kube.port("postgres", PORT)],
        env=[
            kube.env(USER_KEY, pg.user),
            kube.env(f"{PASSWORD_KEY}_FILE", f"{SUPERUSER_DIR}/{PASSWORD_KEY}"),
            kube.env(DATABASE_KEY, pg.database),
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
            kube.mount("superuser", SUPERUSER_DIR, read_only=True),
        ],
    )
    exporter = kube.exporter(
        "postgres-exporter",
        pg.exporter_image,
        ports.POSTGRES_EXPORTER,
        [
            kube.env("DATA_SOURCE_URI", f"127.0.0.1:{PORT}/{pg.database}?sslmode=disable"),
            kube.env("DATA_SOURCE_USER", PG_READONLY),
            kube.env(
                "DATA_SOURCE_PASS_FILE", f"{READONLY_DIR}/{access.PASSWORD_FILES[PG_READONLY]}"
            ),
        ],
        "/",
        EXPORTER_UID,
        [kube.mount("readonly", READONLY_DIR, read_only=True)],
    )
    return [postgres, exporter]


def _claim(pg: PostgresConfig) -> k8s.core.v1.PersistentVolumeClaimSpecArgs:
    return k8s.core.v1.PersistentVolumeClaimSpecArgs(
        access_modes=["ReadWriteOnce"],
        storage_class_name=pg.storage_class,
        resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": pg.storage_size}),
    )


def _pod(
    pg: PostgresConfig, secret_name: pulumi.Input[str], roles_secret: pulumi.Input[str]
) -> k8s.core.v1.PodSpecArgs:
    return k8s.core.v1.PodSpecArgs(
        security_context=kube.pod_security(UID),
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=60,
        containers=_containers(pg),
        volumes=[
            kube.empty_dir("run", "16Mi"),
            kube.empty_dir("tmp", "256Mi"),
            kube.secret_volume("superuser", secret_name, [PASSWORD_KEY]),
            kube.secret_volume("readonly", roles_secret, [access.PASSWORD_FILES[PG_READONLY]]),
        ],
    )
