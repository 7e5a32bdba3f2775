"""The migration Job's pre-migration backup, run as its init containers run it: ``pg_dump`` of a
real Postgres, then the AWS CLI uploading the dump to S3 (moto's server speaks the S3 API over
HTTP) and checking the stored size. A failed or empty backup fails the step."""

from __future__ import annotations

import copy
import os
import subprocess
import urllib.request
from pathlib import Path

import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer

from contract.config import parse_config, read_stack_values
from contract.migration import DUMP_SCRIPT, UPLOAD_SCRIPT, migration_job
from rollout.local.processes import free_port
from tests.conftest import REPO

BUCKET = "acme-portal-backups"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture
def s3():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3", endpoint_url=url, region_name="eu-west-1", **_keys())
    client.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    yield url, client
    server.stop()


def _keys():
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def _containers(endpoint: str) -> dict[str, dict]:
    values = copy.deepcopy(read_stack_values(REPO / "Pulumi.prod.yaml"))
    values["migrations"]["backup"]["endpoint"] = endpoint
    cfg = parse_config(values, "prod")
    job = migration_job(cfg, "2.0.0", "ghcr.io/acme/portal:2.0.0", managed_by="portalctl")
    return {c["name"]: c for c in job["spec"]["template"]["spec"]["initContainers"]}


def _env(container: dict, tmp: Path, **overrides: str) -> dict[str, str]:
    """The container's environment, with its Secrets' files where the kubelet would put them
    (under ``tmp``): the S3 credentials and the migrator's password."""
    env = {"PATH": os.environ["PATH"]}
    for item in container["env"]:
        assert "valueFrom" not in item, f"{item['name']}: a secret reaches the pod as a file"
        env[item["name"]] = item.get("value", "")
    aws = tmp / "aws"
    aws.mkdir(exist_ok=True)
    for key, value in CREDENTIALS.items():
        (aws / key).write_text(value)
    (tmp / "migrator-password").write_text("")
    env.update(
        DUMP_FILE=str(tmp / "portal.dump"),
        HOME=str(tmp),
        AWS_DIR=str(aws),
        PGPASSWORD_FILE=str(tmp / "migrator-password"),
    )
    env.update(overrides)
    return env


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_dump_of_the_database_is_stored_in_s3_and_its_size_checked(s3, pg_dsn, tmp_path):
    url, client = s3
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        conn.execute(
            "INSERT INTO users SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i"
        )
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    containers = _containers(url)
    dump_env = _env(
        containers["pg-dump"],
        tmp_path,
        PGHOST=str(info["host"]),
        PGPORT=str(info["port"]),
        PGUSER=str(info["user"]),
        PGDATABASE=str(info["dbname"]),
    )
    dumped = _run(DUMP_SCRIPT, dump_env)
    assert dumped.returncode == 0, dumped.stderr
    assert "dumped" in dumped.stdout

    uploaded = _run(UPLOAD_SCRIPT, _env(containers["s3-upload"], tmp_path))
    assert uploaded.returncode == 0, uploaded.stderr
    assert "stored and verified s3://acme-portal-backups/portal-prod/pre-migration/2.0.0-" in (
        uploaded.stdout
    )
    (stored,) = client.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert stored["Key"].startswith("portal-prod/pre-migration/2.0.0-")
    assert stored["Key"].endswith("Z.dump")
    assert stored["Size"] == (tmp_path / "portal.dump").stat().st_size
    back = tmp_path / "back.dump"
    client.download_file(BUCKET, stored["Key"], str(back))
    listing = subprocess.run(
        ["pg_restore", "--list", str(back)], capture_output=True, text=True, check=True
    )
    assert "TABLE DATA public users" in listing.stdout


def test_an_empty_dump_is_refused_and_nothing_is_stored(s3, tmp_path):
    url, client = s3
    (tmp_path / "portal.dump").write_bytes(b"")
    result = _run(UPLOAD_SCRIPT, _env(_containers(url)["s3-upload"], tmp_path))
    assert result.returncode == 1
    assert "refusing to store an empty backup" in result.stderr
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET)


def test_an_unreachable_bucket_fails_the_upload(s3, tmp_path):
    url, _client = s3
    (tmp_path / "portal.dump").write_bytes(b"x" * 1024)
    env = _env(_containers(url)["s3-upload"], tmp_path, BUCKET="no-such-bucket")
    result = _run(UPLOAD_SCRIPT, env)
    assert result.returncode != 0
    assert "NoSuchBucket" in result.stderr or "does not exist" in result.stderr
    assert "stored and verified" not in result.stdout
