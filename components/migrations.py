"""The migration Job of the version the stack is created at, as ``contract.migration`` builds it
(``portalctl`` builds each release's Job with the same function): created once the database's
roles exist and before the app Deployments exist (they depend on this Job; Pulumi waits for it to
complete). It runs as ``portal_migrator``, whose database URL and password the ``portal-migrate``
Secret holds (as files). Later versions' migrations run as the Jobs ``portalctl release`` creates,
so the version-bound fields of this one are left out of Pulumi's diffs: a promotion rewrites
``portal:app.version`` and the next ``pulumi up`` neither replaces nor reruns this Job."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from contract import ports
from contract.config import StackConfig
from contract.labels import MIGRATION, PULUMI, VERSION, standard_labels
from contract.migration import MIGRATOR_PASSWORD_KEY, migration_job
from contract.names import DATABASE_URL, PG_MIGRATOR

JOB_IGNORED = ("metadata.name", f'metadata.labels["{VERSION}"]', "spec.template")
"""The Job's fields bound to the version it migrated to (its pod template is immutable anyway)."""


@dataclass(frozen=True)
class MigrationArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""
    migrator_password: pulumi.Input[str]
    """The generated password of ``portal_migrator`` (secret)."""
    postgres_host: pulumi.Input[str]
    """The Postgres Service name."""
    database: pulumi.Resource
    """What must be done first: the Job that creates the roles (after Postgres is ready)."""


class Migration(pulumi.ComponentResource):
    """The migration Job of the stable version (with its backup, when backups are on)."""

    job: k8s.batch.v1.Job
    job_name: pulumi.Output[str]
    secret: k8s.core.v1.Secret

    def __init__(
        self, name: str, args: MigrationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:migrations:Migration", name, None, opts)
        cfg = args.config
        url: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.format(
                "postgresql://{0}:{1}@{2}:{3}/{4}",
                PG_MIGRATOR,
                args.migrator_password,
                args.postgres_host,
                ports.POSTGRES,
                cfg.postgres.database,
            )
        )
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=kube.metadata(
                cfg.names.migrate_secret,
                args.namespace,
                standard_labels(cfg, cfg.names.app, MIGRATION, None),
            ),
            type="Opaque",
            string_data={
                DATABASE_URL: url,
                MIGRATOR_PASSWORD_KEY: pulumi.Output.secret(args.migrator_password),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        body = migration_job(
            cfg,
            cfg.app.version,
            cfg.app.stable_image,
            managed_by=PULUMI,
            migrate_secret=self.secret.metadata.name,
            postgres_host=args.postgres_host,
        )
        meta = body["metadata"]
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=kube.metadata(
                meta["name"], args.namespace, meta["labels"], meta.get("annotations")
            ),
            spec=body["spec"],
            # The pod template of a Job is immutable: a change replaces the Job, and with a
            # fixed name the old one has to go first.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[args.database],
                delete_before_replace=True,
                ignore_changes=list(JOB_IGNORED),
            ),
        )
        self.job_name = self.job.metadata.name
        self.register_outputs(
            {
                "jobName": self.job_name,
                "backup": cfg.migrations.backup.enabled,
            }
        )
