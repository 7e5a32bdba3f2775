"""With ``migrations.backup.enabled`` the release engine backs the database up before every
migration it runs (a release's expand migrations, ``release contract``), with the same two steps
as the migration Job (``contract.migration``): ``pg_dump`` of the real Postgres of the local
stack, then the AWS CLI storing the dump in S3 (moto's server) and checking its size. A backup
that fails stops the release before any migration runs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
import yaml
from moto.server import ThreadedMotoServer

from app.migrate import LOCK_KEY
from contract.config import stack_file
from rollout.ledger import Action, FileLedgerStore, Ledger
from rollout.local.processes import free_port
from rollout.local.stack import DEFAULT_STACK_FILE, STACK, LocalStack
from tests.conftest import REPO

from .conftest import FAST

pytestmark = pytest.mark.slow
BUCKET = "acme-portal-local-backups"  # moto keeps buckets per process: one of its own
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, object]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    yield url, client
    server.stop()


@contextlib.contextmanager
def backups_to(root: Path, endpoint: str, bucket: str) -> Iterator[None]:
    """The stack's ``Pulumi.local.yaml`` with backups on (to ``bucket`` at ``endpoint``) and
    the fast canary windows; put back afterwards."""
    path = stack_file(STACK, root)
    before = path.read_text()
    doc = yaml.safe_load(DEFAULT_STACK_FILE.read_text())
    doc["config"]["portal:canary"].update({**FAST, "steps": [{"weight": 50, "analysis": "2s"}]})
    doc["config"]["portal:migrations"] = {
        "backup": {
            "enabled": True,
            "bucket": bucket,
            "region": REGION,
            "endpoint": endpoint,
            "credentialsSecret": "portal-backup",  # the Job's; the local stack uses the env
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(before)


def portalctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollout.cli", *args, "--local", "--dir", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, **KEYS, "COLUMNS": "200"},
        check=False,
    )


def stored(client, prefix: str) -> list[dict]:
    return list(client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_every_migration_the_engine_runs_is_preceded_by_a_verified_backup(
    stack_root, load, s3, tmp_path
):
    url, client = s3
    with backups_to(stack_root, url, BUCKET):
        released = portalctl(stack_root, "release", "start", "--version", "40.0.0")
        assert released.returncode == 0, released.stdout + released.stderr
        (dump,) = stored(client, "portal-local/pre-migration/40.0.0-")
        back = tmp_path / "back.dump"
        client.download_file(BUCKET, dump["Key"], str(back))
        listing = subprocess.run(
            ["pg_restore", "--list", str(back)], capture_output=True, text=True, check=True
        )
        assert "TABLE DATA public users" in listing.stdout  # the seeded users are in it
        assert dump["Size"] == back.stat().st_size

        contracted = portalctl(stack_root, "release", "contract")
        assert contracted.returncode == 0, contracted.stdout + contracted.stderr
        assert "0003_drop_users_username" in contracted.stdout
        # and one more, of the stable version, just before the contract migration ran
        assert len(stored(client, "portal-local/pre-migration/40.0.0-")) == 2


def test_a_failed_backup_stops_the_release_before_any_migration_runs(stack_root, load, s3):
    url, client = s3
    objects = len(stored(client, ""))
    stack = LocalStack(stack_root)
    # a migration runner that started would wait on this lock: the release would hang
    with psycopg.connect(stack.load()["database_url"], autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with backups_to(stack_root, url, "no-such-bucket"):
            released = portalctl(stack_root, "release", "start", "--version", "41.0.0")
    assert released.returncode == 1, released.stdout + released.stderr
    said = " ".join(released.stdout.split())
    assert "expand migration failed: the pre-migration backup failed at s3-upload" in said
    assert "the migrations did not run" in said
    release = Ledger(FileLedgerStore(stack_root / "ledger.json")).latest()
    assert release.version == "41.0.0" and release.status == "ABORTED"
    assert [t.action for t in release.transitions] == [Action.MIGRATE_EXPAND, Action.ROLLBACK]
    assert release.incident.gate == "migration"
    assert len(stored(client, "")) == objects  # nothing stored
