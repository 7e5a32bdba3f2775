"""With ``migrations.backup.enabled``, every migration Job ``portalctl`` creates on the cluster
(a release's expand migrations, ``release contract``) backs the database up first: its
``pg-dump`` and ``s3-upload`` init containers run as real processes in the Job's pod (the data
plane), dump the stack's real Postgres and store the dump in S3 (moto's server, reached from the
pod's network at the host's end of the pod network link). A backup that fails fails the Job
before the migration runs, and the release stops before any canary.

The contract migration it runs (``0003_drop_users_username``) cannot be undone, so this module
runs after ``test_release.py``, whose scripted-rollback test applies it first (files run in name
order)."""

from __future__ import annotations

import base64
import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from moto.server import ThreadedMotoServer

from rollout.local.processes import free_port
from tests.cluster.conftest import condition
from tests.cluster.release import STACK, ReleaseStack
from tests.dataplane.images import SYSTEM_PATH, VENV_BIN, Image, repository

pytestmark = pytest.mark.slow
REPOSITORY = "ghcr.io/acme/portal"
BUCKET = "acme-portal-cluster-backups"  # moto keeps buckets per process: one of its own
REGION = "eu-west-1"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
SECRET = "portal-backup"


@pytest.fixture(scope="module")
def s3(data_plane: Any) -> Iterator[tuple[str, Any]]:
    """moto's S3 on the host's end of the pod network (where a pod can reach the host)."""
    host = data_plane.network.host_ip
    port = free_port()
    server = ThreadedMotoServer(ip_address=host, port=port)
    server.start()
    url = f"http://{host}:{port}"
    s3_client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    s3_client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    yield url, s3_client
    server.stop()


@contextlib.contextmanager
def backups_to(stack: ReleaseStack, data_plane: Any, endpoint: str, bucket: str) -> Iterator[None]:
    """The stack file with backups on (to ``bucket`` at ``endpoint``), the credentials Secret,
    and the AWS CLI image known to the data plane; the stack file put back afterwards."""
    path = stack.project / f"Pulumi.{STACK}.yaml"
    before = path.read_text()
    doc = yaml.safe_load(before)
    backup = {
        "enabled": True,
        "bucket": bucket,
        "region": REGION,
        "endpoint": endpoint,
        "credentialsSecret": SECRET,
    }
    migrations = dict(doc["config"].get("portal:migrations") or {})
    doc["config"]["portal:migrations"] = {**migrations, "backup": backup}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    uploader = repository(stack.config().migrations.backup.uploader_image)
    data_plane.images.add(
        uploader, Image(entrypoint=("aws",), env={"PATH": f"{VENV_BIN}:{SYSTEM_PATH}"})
    )
    data_plane.install_policy()
    data = {k: base64.b64encode(v.encode()).decode() for k, v in KEYS.items()}
    with contextlib.suppress(ApiException):
        stack.core.create_namespaced_secret(
            stack.namespace, {"metadata": {"name": SECRET}, "data": data}
        )
    try:
        yield
    finally:
        path.write_text(before)


def stored(s3_client: Any, prefix: str) -> list[dict[str, Any]]:
    return list(s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def init_containers(stack: ReleaseStack, job: str) -> list[tuple[str, int | None]]:
    """(name, exit code) of each init container of the Job's pod, as its status reports."""
    (pod,) = stack.core.list_namespaced_pod(stack.namespace, label_selector=f"job-name={job}").items
    out = []
    for status in pod.status.init_container_statuses or []:
        ended = status.state.terminated
        out.append((status.name, ended.exit_code if ended else None))
    return out


def test_every_migration_job_portalctl_creates_backs_the_database_up_first(
    release_stack, data_plane, s3, tmp_path
):
    stack = release_stack
    url, s3_client = s3
    stack.set_canary(steps=[{"weight": 50, "analysis": "3s"}])
    names = stack.config().names
    with backups_to(stack, data_plane, url, BUCKET):
        done = stack.portalctl("release", "start", "--image", f"{REPOSITORY}:40.0.0")
        assert done.returncode == 0, done.stdout + done.stderr
        prefix = f"{stack.namespace}/pre-migration/40.0.0-"
        (dump,) = stored(s3_client, prefix)
        back = tmp_path / "back.dump"
        s3_client.download_file(BUCKET, dump["Key"], str(back))
        listing = subprocess.run(
            ["pg_restore", "--list", str(back)], capture_output=True, text=True, check=True
        )
        assert "TABLE DATA public users" in listing.stdout  # the seeded users are in it
        job = names.migration_job("40.0.0", "expand")
        assert init_containers(stack, job) == [("pg-dump", 0), ("s3-upload", 0)]

        contracted = stack.portalctl("release", "contract")
        assert contracted.returncode == 0, contracted.stdout + contracted.stderr
        assert len(stored(s3_client, prefix)) == 2  # one more, just before the contract ran
        contract_job = names.migration_job("40.0.0", "contract")
        assert init_containers(stack, contract_job) == [("pg-dump", 0), ("s3-upload", 0)]


def test_a_failed_backup_fails_the_job_before_the_migration_and_stops_the_release(
    release_stack, data_plane, s3
):
    stack = release_stack
    url, s3_client = s3
    stack.set_canary(steps=[{"weight": 50, "analysis": "3s"}])
    names = stack.config().names
    objects = len(stored(s3_client, ""))
    with backups_to(stack, data_plane, url, "no-such-bucket"):
        done = stack.portalctl("release", "start", "--image", f"{REPOSITORY}:41.0.0")
    assert done.returncode == 1, done.stdout + done.stderr
    job = names.migration_job("41.0.0", "expand")
    assert job in done.stdout and "failed" in done.stdout
    batch = client.BatchV1Api(stack.kube)
    assert condition(batch.read_namespaced_job(job, stack.namespace), "Failed") == "True"
    assert init_containers(stack, job) == [("pg-dump", 0), ("s3-upload", 1)]
    release = next(r for r in reversed(stack.ledger().releases) if r.version == "41.0.0")
    assert [str(t.action) for t in release.transitions] == ["migrate_expand", "rollback"]
    assert release.incident is not None and release.incident.gate == "migration"
    assert len(stored(s3_client, "")) == objects  # nothing stored
