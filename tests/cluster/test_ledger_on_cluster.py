"""The release ledger in its ConfigMap on a real kube-apiserver: bounded over 1,000 releases,
rotated out of a ledger that an older ``portalctl`` filled to the limit, shared by concurrent
writers without losing an update, and refused in one line when its JSON is not a ledger."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from components.mockrun import run_program
from components.render import manifests
from contract.config import SECRET_KEYS, parse_config, read_stack_values
from rollout.k8s.ledger_store import ConfigMapLedgerStore
from rollout.ledger import Incident, Lease, Ledger, LedgerDoc, retention
from tests import ledger_writes
from tests.cluster.conftest import server_side_apply, wait_for
from tests.conftest import REPO

NAMESPACE = "portal-ledger"
LIMIT = 900 * 1024
STACK_ARGS = ("--stack", "staging", "--project-dir")
KINDS = ("Namespace", "ServiceAccount", "Deployment", "Ingress", "Service")


def config_values() -> dict[str, Any]:
    values = read_stack_values(REPO / "Pulumi.staging.yaml")
    values["namespace"] = NAMESPACE
    return values


@pytest.fixture(scope="module")
def stack(kube: client.ApiClient, dynamic: Any, tmp_path_factory) -> Iterator[Path]:
    """The staging stack's app objects in a namespace of their own, and a project directory
    whose ``Pulumi.staging.yaml`` points ``portalctl`` there."""
    core = client.CoreV1Api(kube)
    with contextlib.suppress(ApiException):
        core.delete_namespace(NAMESPACE)
    wait_for(f"namespace {NAMESPACE} gone", lambda: _gone(core))
    values = config_values()
    secrets = {k: "[secret]" for k in SECRET_KEYS if k in values}
    plain = {k: v for k, v in values.items() if k not in SECRET_KEYS}
    objects = [o for o in manifests(run_program("staging", plain, secrets)) if o["kind"] in KINDS]
    for obj in objects:
        server_side_apply(dynamic, obj)
    apps = client.AppsV1Api(kube)
    wait_for("portal-stable available", lambda: _available(apps, "portal-stable"))
    project = tmp_path_factory.mktemp("project")
    (project / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    doc = yaml.safe_load((REPO / "Pulumi.staging.yaml").read_text())
    doc["config"]["portal:namespace"] = NAMESPACE
    (project / "Pulumi.staging.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    yield project
    with contextlib.suppress(ApiException):
        core.delete_namespace(NAMESPACE)


def _gone(core: client.CoreV1Api) -> bool:
    try:
        core.read_namespace(NAMESPACE)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def _available(apps: client.AppsV1Api, name: str) -> bool:
    status = apps.read_namespaced_deployment(name, NAMESPACE).status
    return int(status.available_replicas or 0) >= 1


def store(kube: client.ApiClient) -> ConfigMapLedgerStore:
    return ConfigMapLedgerStore(parse_config(config_values(), "staging"), kube)


def stored_size(kube: client.ApiClient, name: str) -> int:
    """The ConfigMap's size as the API server holds it (its JSON, metadata included)."""
    cm = client.CoreV1Api(kube).read_namespaced_config_map(name, NAMESPACE)
    return len(json.dumps(kube.sanitize_for_serialization(cm), separators=(",", ":")).encode())


def portalctl(project: Path, control_plane: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollout.cli", *args, *STACK_ARGS, str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "KUBECONFIG": control_plane.kubeconfig, "COLUMNS": "200"},
        check=False,
    )


def reset_ledger(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    with contextlib.suppress(ApiException):
        core.delete_namespaced_config_map("portal-releases", NAMESPACE)
    core.delete_collection_namespaced_config_map(
        NAMESPACE, label_selector="app.kubernetes.io/component=ledger-archive"
    )


def test_a_thousand_releases_keep_every_ledger_object_under_900_kib(control_plane, kube, stack):
    reset_ledger(kube)
    ledger = Ledger(store(kube), "staging", f"kubernetes:{NAMESPACE}")
    largest = 0
    started = time.time() - 1000 * 3600
    for n in range(1, 1001):
        long = n % 100 == 0 or n == 985  # some as long as a prod release (180 rounds)
        ledger_writes.release(ledger, n, 180 if long else 8, n % 7 == 3, started + 3600 * n)
        if long or n % 50 == 0:
            largest = max(largest, stored_size(kube, "portal-releases"))
    archives = (
        client.CoreV1Api(kube)
        .list_namespaced_config_map(
            NAMESPACE, label_selector="app.kubernetes.io/component=ledger-archive"
        )
        .items
    )
    largest = max([largest, *(stored_size(kube, a.metadata.name) for a in archives)])
    assert largest < LIMIT, f"the largest ledger object took {largest} bytes"
    assert len(archives) == retention.KEEP_ARCHIVED
    doc = ledger.read()
    assert len([r for r in doc.releases if r.summarized]) == retention.KEEP_SUMMARIES
    latest = doc.latest()
    assert latest.version == "1.1000.0" and latest.samples and not latest.summarized
    # the last long release, archived whole, its readings folded and its report points kept
    whole = ledger.find("01000-1.1000.0")
    assert whole.folded is not None and len(whole.samples) > 60
    archived = ledger.find("00985-1.985.0")
    assert archived.transitions and archived.folded is not None

    status = portalctl(stack, control_plane, "release", "status", "--limit", "3")
    assert status.returncode == 0, status.stderr
    assert "stable 1.1000.0" in status.stdout and "00999-1.999.0" in status.stdout
    back = portalctl(stack, control_plane, "rollback", "--to", "1.989.0")
    assert back.returncode == 0, back.stdout + back.stderr
    stable = client.AppsV1Api(kube).read_namespaced_deployment("portal-stable", NAMESPACE)
    assert stable.spec.template.spec.containers[0].image == "ghcr.io/acme/portal:1.989.0"
    assert ledger.read().stable.version == "1.989.0"
    gone = portalctl(stack, control_plane, "rollback", "--to", "1.5.0")  # beyond the history kept
    assert gone.returncode == 2 and "not a known-good release" in gone.stderr


def filled_by_an_older_portalctl(target_bytes: int) -> dict[str, Any]:
    """A schema-2 document as the code before it wrote it: 50 whole releases kept, every
    check round's sample in each (here 40 rounds a release), until it is ``target_bytes``."""
    doc = LedgerDoc(stack="staging", target=f"kubernetes:{NAMESPACE}")
    n = 0
    while retention.size_of(doc.model_dump(mode="json", by_alias=True)) < target_bytes:
        n += 1
        for write in ledger_writes.writes(n, rounds=4, aborted=False, start=1e9 + 3600 * n):
            write(doc)
        doc.releases[-1].samples = [ledger_writes.round_of(1e9, 0, 10, i)[0] for i in range(40)]
    raw = doc.model_dump(mode="json", by_alias=True)
    raw["schema_version"] = 2
    for release in raw["releases"]:
        del release["summarized"], release["folded"]
    del raw["takeovers"]
    return raw


def test_a_ledger_an_older_portalctl_filled_to_the_limit_is_rotated_on_the_next_write(kube, stack):
    """The next write of this portalctl archives every finished release but the newest and
    leaves a document a fraction of the size."""
    reset_ledger(kube)
    raw = filled_by_an_older_portalctl(950 * 1024)
    store(kube).save(raw, None)
    before = stored_size(kube, "portal-releases")
    assert before > 950 * 1024
    Ledger(store(kube), "staging", "x").update(lambda d: None)  # any write of this portalctl
    after = stored_size(kube, "portal-releases")
    assert after < before / 4, (before, after)
    doc = Ledger(store(kube)).read()
    assert [r.summarized for r in doc.releases].count(False) == 1
    assert len(doc.releases) == len(raw["releases"])
    newest = raw["releases"][-2]["id"]
    assert len(Ledger(store(kube)).find(newest).samples) == 40  # archived whole


def _take(kubeconfig: str, holder: str, results: Any) -> None:
    api = config.new_client_from_config(config_file=kubeconfig)
    ledger = Ledger(store(api), "staging", "k")

    def take(doc: LedgerDoc) -> bool:
        if doc.lease_live(time.time()):
            return False
        doc.lease = Lease(holder=holder, expires_at=time.time() + 600)
        return True

    results.put((holder, ledger.update(take)))


def _append(kubeconfig: str, i: int) -> None:
    api = config.new_client_from_config(config_file=kubeconfig)
    ledger = Ledger(store(api), "staging", "k")
    for n in range(10):
        incident = Incident(id=f"{i}-{n}", opened_at=0.0, reason="race")
        ledger.update(lambda d, inc=incident: d.incidents.append(inc))


def test_concurrent_portalctl_processes_share_the_configmap_without_losing_a_write(
    control_plane, kube, stack
):
    reset_ledger(kube)
    results: multiprocessing.Queue = multiprocessing.Queue()
    racers = [
        multiprocessing.Process(target=_take, args=(control_plane.kubeconfig, f"h{i}", results))
        for i in range(4)
    ]
    writers = [
        multiprocessing.Process(target=_append, args=(control_plane.kubeconfig, i))
        for i in range(3)
    ]
    for p in racers + writers:
        p.start()
    for p in racers + writers:
        p.join(120)
    won = [h for h, ok in (results.get(timeout=10) for _ in racers) if ok]
    assert len(won) == 1
    doc = Ledger(store(kube)).read()
    assert doc.lease.holder == won[0]
    assert sorted(i.id for i in doc.incidents) == sorted(
        f"{i}-{n}" for i in range(3) for n in range(10)
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object, found an array"),
        ('{"schema_version": 3, "releases": [{"id": 1}]}', "releases[0].id"),
        ('{"schema_version": 9}', "written by a newer portalctl (schema 9)"),
    ],
)
def test_a_configmap_ledger_that_is_not_a_ledger_is_refused_in_one_line(
    control_plane, kube, stack, data, message
):
    reset_ledger(kube)
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "portal-releases"}, "data": {"ledger.json": data}}
    )
    before = core.read_namespaced_config_map("portal-releases", NAMESPACE).metadata.resource_version
    for args in (
        ("release", "status"),
        ("release", "start", "--image", "ghcr.io/acme/portal:9.9.9"),
    ):
        result = portalctl(stack, control_plane, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "ConfigMap portal-ledger/portal-releases" in lines[0]
        assert message in lines[0], lines[0]
    after = core.read_namespaced_config_map("portal-releases", NAMESPACE).metadata.resource_version
    assert after == before  # nothing was written
