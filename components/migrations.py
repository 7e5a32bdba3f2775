"""The migration Job: one per app version (the name derives from it, so a new release runs a new
Job), running the app image's migration runner (``migrate --phase expand``) once Postgres is ready
and before the app Deployments change (they depend on this Job; Pulumi waits for it to complete).

With ``migrations.backup.enabled`` two init containers first take a backup: ``pg-dump`` (the
Postgres image) writes a custom-format dump to a scratch volume, ``s3-upload`` (a stock Python
image running ``s3_upload.py`` from a ConfigMap) stores it in the configured bucket and verifies
the stored size. A failed backup fails the Job, so no migration runs without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from components.app_env import DATABASE_URL
from components.config import Resources, StackConfig
from components.postgres import DATABASE_KEY, PASSWORD_KEY, USER_KEY
from components.postgres import PORT as POSTGRES_PORT
from components.postgres import UID as POSTGRES_UID

MIGRATE_ARGS = ("migrate", "--phase", "expand")
APP_COMMAND = ("python", "-m", "app")

UPLOAD_SCRIPT = Path(__file__).with_name("s3_upload.py")
SCRIPT_DIR = "/scripts"
BACKUP_DIR = "/backup"
DUMP_FILE = f"{BACKUP_DIR}/portal.dump"
DUMP_SCRIPT = (
    'set -eu; pg_dump --format=custom --no-owner --no-privileges --file="$DUMP_FILE.partial"; '
    'mv "$DUMP_FILE.partial" "$DUMP_FILE"; '
    'echo "dumped $PGDATABASE: $(wc -c < "$DUMP_FILE") bytes"'
)
"""The ``pg-dump`` container's script; connection settings come from the ``PG*`` variables."""
BACKUP_RESOURCES = Resources("100m", "128Mi", "1", "512Mi")


def backup_key(cfg: StackConfig, version: str) -> str:
    """The object key of a pre-migration backup (``{timestamp}`` is filled in at upload time)."""
    return f"{cfg.namespace}/pre-migration/{version}-{{timestamp}}.dump"


def upload_args(cfg: StackConfig, version: str) -> list[str]:
    """Arguments of ``s3_upload.py`` for this stack's bucket."""
    backup = cfg.migrations.backup
    if backup.bucket is None:
        raise ValueError("the backup has no bucket (portal:migrations.backup.bucket)")
    argv = [
        "--file",
        DUMP_FILE,
        "--bucket",
        backup.bucket,
        "--key",
        backup_key(cfg, version),
        "--region",
        backup.region,
    ]
    if backup.endpoint:
        argv += ["--endpoint", backup.endpoint]
    return argv


@dataclass(frozen=True)
class MigrationArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""
    env_secret: pulumi.Input[str]
    """Name of the Secret holding PORTAL_DATABASE_URL (``portal-env``)."""
    postgres_secret: pulumi.Input[str]
    """Name of the Postgres Secret (user and password for the backup's pg_dump)."""
    postgres_host: pulumi.Input[str]
    """The Postgres Service name."""
    database: pulumi.Resource
    """The Postgres workload: the Job is created only once it is ready."""


class Migration(pulumi.ComponentResource):
    """The migration Job of the stable version (and its backup script, when backups are on)."""

    job: k8s.batch.v1.Job
    job_name: pulumi.Output[str]
    script: k8s.core.v1.ConfigMap | None

    def __init__(
        self, name: str, args: MigrationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:migrations:Migration", name, None, opts)
        cfg = args.config
        app = cfg.app
        names = cfg.names
        child = pulumi.ResourceOptions(parent=self)
        labels = kube.standard_labels(cfg, names.app, kube.MIGRATION, app.version)

        init_containers: list[k8s.core.v1.ContainerArgs] = []
        volumes = [kube.empty_dir("tmp")]
        self.script = None
        if cfg.migrations.backup.enabled:
            self.script = k8s.core.v1.ConfigMap(
                f"{name}-backup-script",
                metadata=kube.metadata(f"{names.app}-backup-script", args.namespace, labels),
                data={UPLOAD_SCRIPT.name: UPLOAD_SCRIPT.read_text()},
                opts=child,
            )
            init_containers = self._backup_containers(args)
            volumes += [
                kube.config_map_volume("scripts", self.script.metadata.name),
                kube.empty_dir("backup", cfg.postgres.storage_size),
            ]

        migrate = k8s.core.v1.ContainerArgs(
            name="migrate",
            image=app.stable_image,
            command=list(APP_COMMAND),
            args=list(MIGRATE_ARGS),
            env=[kube.env_from_secret(DATABASE_URL, args.env_secret, DATABASE_URL)],
            resources=kube.resources(app.resources),
            security_context=kube.container_security(),
            volume_mounts=[kube.mount("tmp", "/tmp")],  # noqa: S108 - an emptyDir
        )
        m = cfg.migrations
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=kube.metadata(names.migration_job(app.version), args.namespace, labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=m.backoff_limit,
                active_deadline_seconds=m.active_deadline_seconds,
                ttl_seconds_after_finished=m.ttl_seconds_after_finished,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="Never",
                        security_context=kube.pod_security(kube.APP_UID),
                        automount_service_account_token=False,
                        enable_service_links=False,
                        init_containers=init_containers or None,
                        containers=[migrate],
                        volumes=volumes,
                    ),
                ),
            ),
            # The pod template of a Job is immutable: a change replaces the Job, and with a
            # fixed name the old one has to go first.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[args.database], delete_before_replace=True
            ),
        )
        self.job_name = self.job.metadata.name
        self.register_outputs(
            {
                "jobName": self.job_name,
                "backup": cfg.migrations.backup.enabled,
            }
        )

    @staticmethod
    def _backup_containers(args: MigrationArgs) -> list[k8s.core.v1.ContainerArgs]:
        cfg = args.config
        backup = cfg.migrations.backup
        if backup.credentials_secret is None:
            raise ValueError("the backup has no credentials (migrations.backup.credentialsSecret)")
        dump = k8s.core.v1.ContainerArgs(
            name="pg-dump",
            image=cfg.postgres.image,
            command=["sh", "-c", DUMP_SCRIPT],
            env=[
                kube.env("PGHOST", args.postgres_host),
                kube.env("PGPORT", str(POSTGRES_PORT)),
                kube.env_from_secret("PGUSER", args.postgres_secret, USER_KEY),
                kube.env_from_secret("PGPASSWORD", args.postgres_secret, PASSWORD_KEY),
                kube.env_from_secret("PGDATABASE", args.postgres_secret, DATABASE_KEY),
                kube.env("DUMP_FILE", DUMP_FILE),
            ],
            resources=kube.resources(BACKUP_RESOURCES),
            security_context=kube.container_security(POSTGRES_UID),
            volume_mounts=[kube.mount("backup", BACKUP_DIR)],
        )
        upload = k8s.core.v1.ContainerArgs(
            name="s3-upload",
            image=backup.uploader_image,
            command=["python", f"{SCRIPT_DIR}/{UPLOAD_SCRIPT.name}"],
            args=upload_args(cfg, cfg.app.version),
            env=[
                kube.env_from_secret(
                    "AWS_ACCESS_KEY_ID", backup.credentials_secret, "AWS_ACCESS_KEY_ID"
                ),
                kube.env_from_secret(
                    "AWS_SECRET_ACCESS_KEY", backup.credentials_secret, "AWS_SECRET_ACCESS_KEY"
                ),
                kube.env("PYTHONDONTWRITEBYTECODE", "1"),
            ],
            resources=kube.resources(BACKUP_RESOURCES),
            security_context=kube.container_security(),
            volume_mounts=[
                kube.mount("backup", BACKUP_DIR, read_only=True),
                kube.mount("scripts", SCRIPT_DIR, read_only=True),
            ],
        )
        return [dump, upload]
