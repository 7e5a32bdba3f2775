"""The Job that creates the database's roles (``contract/postgres_roles.sql``) as the superuser:
after Postgres is ready, before the migration Job (which runs as ``portal_migrator``), and again
whenever the script or a password changes (its pod template carries their checksum, and a Job's
template is immutable, so a change replaces the Job)."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from contract import access, labels, ports, security
from contract.config import StackConfig, container_resources
from contract.names import POSTGRES_PASSWORD_KEY

SUPERUSER_DIR = "/var/run/secrets/postgres"
ROLES_DIR = "/var/run/secrets/postgres-roles"
SCRIPT_DIR = "/var/run/postgres-roles"
RESOURCES = container_resources("50m", "64Mi", "500m", "128Mi")
COMMAND = (
    f'set -eu; PGPASSWORD="$(cat {SUPERUSER_DIR}/{POSTGRES_PASSWORD_KEY})"; export PGPASSWORD; '
    + "exec "
    + " ".join(access.psql_command(f"{SCRIPT_DIR}/{access.ROLES_SCRIPT_FILE}", ROLES_DIR))
)


def roles_job(
    name: str,
    cfg: StackConfig,
    namespace: pulumi.Input[str],
    *,
    host: pulumi.Input[str],
    superuser_secret: pulumi.Input[str],
    roles_secret: pulumi.Input[str],
    passwords: list[pulumi.Output[str]],
    opts: pulumi.ResourceOptions,
) -> k8s.batch.v1.Job:
    """The ConfigMap with the script and the Job running it."""
    pg = cfg.postgres
    n = cfg.names
    job_labels = labels.standard_labels(cfg, n.postgres, labels.ROLES, kube.image_tag(pg.image))
    script = k8s.core.v1.ConfigMap(
        f"{name}-roles-script",
        metadata=kube.metadata(n.postgres_roles, namespace, job_labels),
        data={access.ROLES_SCRIPT_FILE: access.ROLES_SQL},
        opts=pulumi.ResourceOptions(parent=opts.parent),
    )
    checksum = pulumi.Output.all(*passwords).apply(
        lambda values: access.checksum(access.ROLES_SQL, *values)
    )
    container = k8s.core.v1.ContainerArgs(
        name="roles",
        image=pg.image,
        image_pull_policy=kube.pull_policy(pg.image),
        command=["sh", "-c", COMMAND],
        env=[
            kube.env("PGHOST", host),
            kube.env("PGPORT", str(ports.POSTGRES)),
            kube.env("PGUSER", pg.user),
            kube.env("PGDATABASE", pg.database),
            kube.env("PGCONNECT_TIMEOUT", "10"),
            kube.env("HOME", "/tmp"),  # noqa: S108 - an emptyDir
        ],
        resources=kube.resources(RESOURCES),
        security_context=kube.container_security(),
        volume_mounts=[
            kube.mount("superuser", SUPERUSER_DIR, read_only=True),
            kube.mount("roles", ROLES_DIR, read_only=True),
            kube.mount("script", SCRIPT_DIR, read_only=True),
            kube.mount("tmp", "/tmp"),  # noqa: S108 - an emptyDir
        ],
    )
    pod = k8s.core.v1.PodSpecArgs(
        restart_policy="Never",
        security_context=kube.pod_security(ports.APP_UID),
        automount_service_account_token=False,
        enable_service_links=False,
        containers=[container],
        volumes=[
            kube.secret_volume("superuser", superuser_secret, [POSTGRES_PASSWORD_KEY]),
            kube.secret_volume("roles", roles_secret),
            kube.config_map_volume("script", script.metadata.name),
            kube.empty_dir("tmp", "16Mi"),
        ],
    )
    m = cfg.migrations
    annotations = security.skips(security.unpinned(pg.image)) or None
    return k8s.batch.v1.Job(
        f"{name}-roles",
        metadata=kube.metadata(n.postgres_roles, namespace, job_labels, annotations),
        spec=k8s.batch.v1.JobSpecArgs(
            backoff_limit=max(m.backoff_limit, 3),
            active_deadline_seconds=600,
            ttl_seconds_after_finished=m.ttl_seconds_after_finished,
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    labels=job_labels, annotations={"checksum/roles": checksum}
                ),
                spec=pod,
            ),
        ),
        opts=opts,
    )
