"""The migration Job of the version the stack is created at, as ``contract.migration`` builds it
(``portalctl`` builds each release's Job with the same function): created once Postgres is ready
and before the app Deployments exist (they depend on this Job; Pulumi waits for it to complete).
Later versions' migrations run as the Jobs ``portalctl release`` creates, so the version-bound
fields of this one are left out of Pulumi's diffs: a promotion rewrites ``portal:app.version``
and the next ``pulumi up`` neither replaces nor reruns this Job."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from contract.config import StackConfig
from contract.labels import PULUMI, VERSION
from contract.migration import migration_job

JOB_IGNORED = ("metadata.name", f'metadata.labels["{VERSION}"]', "spec.template")
"""The Job's fields bound to the version it migrated to (its pod template is immutable anyway)."""


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
    """The migration Job of the stable version (with its backup, when backups are on)."""

    job: k8s.batch.v1.Job
    job_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: MigrationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:migrations:Migration", name, None, opts)
        cfg = args.config
        body = migration_job(
            cfg,
            cfg.app.version,
            cfg.app.stable_image,
            managed_by=PULUMI,
            app_secret=args.env_secret,
            postgres_secret=args.postgres_secret,
            postgres_host=args.postgres_host,
        )
        meta = body["metadata"]
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=kube.metadata(meta["name"], args.namespace, meta["labels"]),
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
