"""The migration Job, built once for both paths that create it: the Pulumi component (the stable
version's Job, before the app Deployments change) and ``portalctl`` (each release's expand Job,
and the contract Job). One Job per app version and phase; the name derives from them.

The runner (``python -m app migrate --phase P --json``) prints what it applied as its last line.
With ``migrations.backup.enabled`` two init containers first take a backup: ``pg-dump`` (the
Postgres image) writes a custom-format dump to a scratch volume, ``s3-upload`` (the AWS CLI
image) stores it in the bucket and checks the stored size. A failed backup fails the Job, so no
migration runs without one.

The Job runs as the ``portal_migrator`` role (the schema's owner; ``contract.access``): its
database URL and password come from the ``portal-migrate`` Secret as files, and so do the S3
credentials of the backup. The manifest is plain data (camelCase, as the API takes it).
References to other objects (``migrate_secret``, ``postgres_host``) are whatever the caller
holds: names for ``portalctl``, Pulumi outputs for the component (so Pulumi orders the
resources).
"""

from __future__ import annotations

from typing import Any

from contract import labels, ports, security
from contract.config import Resources, StackConfig, container_resources
from contract.names import (
    DATABASE_URL,
    NAMES,
    PG_MIGRATOR,
    SECRETS_DIR,
    Phase,
)

APP_COMMAND = ("python", "-m", "app")
BACKUP_DIR = "/backup"
DUMP_FILE = f"{BACKUP_DIR}/portal.dump"
TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir of the pod
BACKUP_RESOURCES = container_resources("100m", "128Mi", "1", "512Mi")
MIGRATOR_PASSWORD_KEY = "password"  # noqa: S105 - a key name
"""Key of the ``portal-migrate`` Secret with the migrator's password (the backup's pg_dump)."""
AWS_DIR = "/var/run/secrets/aws"
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

DUMP_SCRIPT = (
    'set -eu; PGPASSWORD="$(cat "$PGPASSWORD_FILE")"; export PGPASSWORD; '
    'pg_dump --format=custom --no-owner --no-privileges --file="$DUMP_FILE.partial"; '
    'mv "$DUMP_FILE.partial" "$DUMP_FILE"; '
    'echo "dumped $PGDATABASE: $(wc -c < "$DUMP_FILE") bytes"'
)
"""The ``pg-dump`` container's script; connection settings come from the ``PG*`` variables, the
password from the file ``$PGPASSWORD_FILE`` names."""

UPLOAD_SCRIPT = (
    "set -eu; "
    'AWS_ACCESS_KEY_ID="$(cat "$AWS_DIR/AWS_ACCESS_KEY_ID")"; '
    'AWS_SECRET_ACCESS_KEY="$(cat "$AWS_DIR/AWS_SECRET_ACCESS_KEY")"; '
    "export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; "
    'key="${KEY_PREFIX}$(date -u +%Y%m%dT%H%M%SZ).dump"; '
    'size=$(wc -c < "$DUMP_FILE"); '
    'if [ "$size" -eq 0 ]; then echo "$DUMP_FILE is empty: refusing to store an empty backup" >&2; '
    "exit 1; fi; "
    'aws s3 cp --only-show-errors "$DUMP_FILE" "s3://$BUCKET/$key"; '
    'stored=$(aws s3api head-object --bucket "$BUCKET" --key "$key" '
    "--query ContentLength --output text); "
    'if [ "$stored" != "$size" ]; then '
    'echo "s3://$BUCKET/$key holds $stored bytes, the file $size" >&2; exit 1; fi; '
    'echo "stored and verified s3://$BUCKET/$key ($size bytes)"'
)
"""The ``s3-upload`` container's script (the AWS CLI uploads in parts and retries by itself); the
credentials are the files of the Secret ``migrations.backup.credentialsSecret`` in ``$AWS_DIR``."""


def backup_prefix(cfg: StackConfig, version: str) -> str:
    """The object key of a pre-migration backup, up to the UTC time of the upload."""
    return f"{cfg.namespace}/pre-migration/{version}-"


def upload_env(
    cfg: StackConfig,
    version: str,
    dump_file: str = DUMP_FILE,
    home: str = TMP_DIR,
    aws_dir: str = AWS_DIR,
) -> dict[str, str]:
    """The ``s3-upload`` step's environment; the credentials are the files in ``aws_dir`` (the
    Job mounts ``credentialsSecret`` there; the local stack writes ``portalctl``'s own)."""
    backup = cfg.migrations.backup
    env = {
        "AWS_DIR": aws_dir,
        "AWS_DEFAULT_REGION": backup.region,
        "BUCKET": str(backup.bucket),
        "KEY_PREFIX": backup_prefix(cfg, version),
        "DUMP_FILE": dump_file,
        "HOME": home,
    }
    if backup.endpoint:
        env["AWS_ENDPOINT_URL"] = str(backup.endpoint)
    return env


def _env(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_volume(name: str, secret: Any, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A Secret's keys as files readable by the pod's group only."""
    source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if keys:
        source["items"] = [{"key": k, "path": k} for k in keys]
    return {"name": name, "secret": source}


def _mount(name: str, path: str, read_only: bool = False) -> dict[str, Any]:
    return {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}


def _empty_dir(name: str, size: str = "64Mi") -> dict[str, Any]:
    return {"name": name, "emptyDir": {"sizeLimit": size}}


def _backup_containers(cfg: StackConfig, version: str, postgres_host: Any) -> list[dict[str, Any]]:
    backup = cfg.migrations.backup
    resources = _resources(BACKUP_RESOURCES)
    dump = {
        "name": "pg-dump",
        "image": cfg.postgres.image,
        "imagePullPolicy": security.pull_policy(cfg.postgres.image),
        "command": ["sh", "-c", DUMP_SCRIPT],
        "env": [
            _env("PGHOST", postgres_host),
            _env("PGPORT", str(ports.POSTGRES)),
            _env("PGUSER", PG_MIGRATOR),
            _env("PGPASSWORD_FILE", f"{SECRETS_DIR}/{MIGRATOR_PASSWORD_KEY}"),
            _env("PGDATABASE", cfg.postgres.database),
            _env("DUMP_FILE", DUMP_FILE),
            _env("HOME", TMP_DIR),
        ],
        "resources": resources,
        "securityContext": security.container(),
        "volumeMounts": [
            _mount("backup", BACKUP_DIR),
            _mount("migrate", SECRETS_DIR, read_only=True),
            _mount("tmp", TMP_DIR),
        ],
    }
    env = [
        *(_env(k, v) for k, v in upload_env(cfg, version).items()),
    ]
    upload = {
        "name": "s3-upload",
        "image": backup.uploader_image,
        "imagePullPolicy": security.pull_policy(backup.uploader_image),
        "command": ["sh", "-c", UPLOAD_SCRIPT],
        "env": env,
        "resources": resources,
        "securityContext": security.container(),
        "volumeMounts": [
            _mount("backup", BACKUP_DIR, read_only=True),
            _mount("tmp", TMP_DIR),
            _mount("aws", AWS_DIR, read_only=True),
        ],
    }
    return [dump, upload]


def _resources(r: Resources) -> dict[str, Any]:
    return {"requests": dict(r.as_k8s()["requests"]), "limits": dict(r.as_k8s()["limits"])}


def migration_job(
    cfg: StackConfig,
    version: str,
    image: str,
    phase: Phase = "expand",
    *,
    managed_by: labels.ManagedBy,
    migrate_secret: Any = NAMES.migrate_secret,
    postgres_host: Any = NAMES.postgres,
) -> dict[str, Any]:
    """The Job that migrates the database for ``version`` (``image``) in ``phase``."""
    m = cfg.migrations
    job_labels = labels.standard_labels(
        cfg, cfg.names.app, labels.MIGRATION, version, managed_by=managed_by
    )
    migrate = {
        "name": "migrate",
        "image": image,
        "imagePullPolicy": security.pull_policy(image),
        "command": list(APP_COMMAND),
        "args": ["migrate", "--phase", phase, "--json"],
        "env": [_env(f"{DATABASE_URL}_FILE", f"{SECRETS_DIR}/{DATABASE_URL}")],
        "resources": _resources(cfg.app.resources),
        "securityContext": security.container(),
        "volumeMounts": [_mount("tmp", TMP_DIR), _mount("migrate", SECRETS_DIR, read_only=True)],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": security.pod(ports.APP_UID),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [migrate],
        "volumes": [_empty_dir("tmp"), _secret_volume("migrate", migrate_secret)],
    }
    images = [image]
    if m.backup.enabled:
        pod["initContainers"] = _backup_containers(cfg, version, postgres_host)
        pod["volumes"].append(_empty_dir("backup", cfg.postgres.storage_size))
        pod["volumes"].append(_secret_volume("aws", m.backup.credentials_secret, AWS_KEYS))
        images += [cfg.postgres.image, m.backup.uploader_image]
    metadata: dict[str, Any] = {
        "name": cfg.names.migration_job(version, phase),
        "labels": job_labels,
    }
    skips = security.skips(security.unpinned(*images))
    if skips:
        metadata["annotations"] = skips
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": m.backoff_limit,
            "activeDeadlineSeconds": m.active_deadline_seconds,
            "ttlSecondsAfterFinished": m.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod},
        },
    }
