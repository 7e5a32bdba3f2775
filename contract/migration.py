"""The migration Job, built once for both paths that create it: the Pulumi component (the stable
version's Job, before the app Deployments change) and ``portalctl`` (each release's expand Job,
and the contract Job). One Job per app version and phase; the name derives from them.

The runner (``python -m app migrate --phase P --json``) prints what it applied as its last line.
With ``migrations.backup.enabled`` two init containers first take a backup: ``pg-dump`` (the
Postgres image) writes a custom-format dump to a scratch volume, ``s3-upload`` (the AWS CLI
image) stores it in the bucket and checks the stored size. A failed backup fails the Job, so no
migration runs without one.

The manifest is plain data (camelCase, as the API takes it). References to other objects
(``app_secret``, ``postgres_secret``, ``postgres_host``) are whatever the caller holds: names
for ``portalctl``, Pulumi outputs for the component (so Pulumi orders the resources).
"""

from __future__ import annotations

from typing import Any

from contract import labels, ports, security
from contract.config import Resources, StackConfig, container_resources
from contract.names import (
    DATABASE_URL,
    NAMES,
    POSTGRES_DATABASE_KEY,
    POSTGRES_PASSWORD_KEY,
    POSTGRES_USER_KEY,
    Phase,
)

APP_COMMAND = ("python", "-m", "app")
BACKUP_DIR = "/backup"
DUMP_FILE = f"{BACKUP_DIR}/portal.dump"
TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir of the pod
BACKUP_RESOURCES = container_resources("100m", "128Mi", "1", "512Mi")

DUMP_SCRIPT = (
    'set -eu; pg_dump --format=custom --no-owner --no-privileges --file="$DUMP_FILE.partial"; '
    'mv "$DUMP_FILE.partial" "$DUMP_FILE"; '
    'echo "dumped $PGDATABASE: $(wc -c < "$DUMP_FILE") bytes"'
)
"""The ``pg-dump`` container's script; connection settings come from the ``PG*`` variables."""

UPLOAD_SCRIPT = (
    "set -eu; "
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
"""The ``s3-upload`` container's script (the AWS CLI uploads in parts and retries by itself)."""


def backup_prefix(cfg: StackConfig, version: str) -> str:
    """The object key of a pre-migration backup, up to the UTC time of the upload."""
    return f"{cfg.namespace}/pre-migration/{version}-"


def _env(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(name: str, secret: Any, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _mount(name: str, path: str, read_only: bool = False) -> dict[str, Any]:
    return {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}


def _empty_dir(name: str, size: str = "64Mi") -> dict[str, Any]:
    return {"name": name, "emptyDir": {"sizeLimit": size}}


def _backup_containers(
    cfg: StackConfig, version: str, postgres_secret: Any, postgres_host: Any
) -> list[dict[str, Any]]:
    backup = cfg.migrations.backup
    resources = _resources(BACKUP_RESOURCES)
    dump = {
        "name": "pg-dump",
        "image": cfg.postgres.image,
        "command": ["sh", "-c", DUMP_SCRIPT],
        "env": [
            _env("PGHOST", postgres_host),
            _env("PGPORT", str(ports.POSTGRES)),
            _secret_env("PGUSER", postgres_secret, POSTGRES_USER_KEY),
            _secret_env("PGPASSWORD", postgres_secret, POSTGRES_PASSWORD_KEY),
            _secret_env("PGDATABASE", postgres_secret, POSTGRES_DATABASE_KEY),
            _env("DUMP_FILE", DUMP_FILE),
        ],
        "resources": resources,
        "securityContext": security.container(ports.POSTGRES_UID),
        "volumeMounts": [_mount("backup", BACKUP_DIR)],
    }
    env = [
        _secret_env("AWS_ACCESS_KEY_ID", backup.credentials_secret, "AWS_ACCESS_KEY_ID"),
        _secret_env("AWS_SECRET_ACCESS_KEY", backup.credentials_secret, "AWS_SECRET_ACCESS_KEY"),
        _env("AWS_DEFAULT_REGION", backup.region),
        _env("BUCKET", backup.bucket),
        _env("KEY_PREFIX", backup_prefix(cfg, version)),
        _env("DUMP_FILE", DUMP_FILE),
        _env("HOME", TMP_DIR),
    ]
    if backup.endpoint:
        env.append(_env("AWS_ENDPOINT_URL", backup.endpoint))
    upload = {
        "name": "s3-upload",
        "image": backup.uploader_image,
        "command": ["sh", "-c", UPLOAD_SCRIPT],
        "env": env,
        "resources": resources,
        "securityContext": security.container(),
        "volumeMounts": [_mount("backup", BACKUP_DIR, read_only=True), _mount("tmp", TMP_DIR)],
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
    app_secret: Any = NAMES.app_secret,
    postgres_secret: Any = NAMES.postgres_secret,
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
        "command": list(APP_COMMAND),
        "args": ["migrate", "--phase", phase, "--json"],
        "env": [_secret_env(DATABASE_URL, app_secret, DATABASE_URL)],
        "resources": _resources(cfg.app.resources),
        "securityContext": security.container(),
        "volumeMounts": [_mount("tmp", TMP_DIR)],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": security.pod(ports.APP_UID),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [migrate],
        "volumes": [_empty_dir("tmp")],
    }
    if m.backup.enabled:
        pod["initContainers"] = _backup_containers(cfg, version, postgres_secret, postgres_host)
        pod["volumes"].append(_empty_dir("backup", cfg.postgres.storage_size))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": cfg.names.migration_job(version, phase), "labels": job_labels},
        "spec": {
            "backoffLimit": m.backoff_limit,
            "activeDeadlineSeconds": m.active_deadline_seconds,
            "ttlSecondsAfterFinished": m.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod},
        },
    }
