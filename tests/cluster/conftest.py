"""Helpers for tests against the real control plane (the ``control_plane`` and ``kube`` fixtures
live in ``tests/conftest.py``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.conftest import REPO

T = TypeVar("T")

FIELD_MANAGER = "portal-tests"


@pytest.fixture(scope="session")
def dynamic(kube: client.ApiClient) -> DynamicClient:
    return DynamicClient(kube)


@dataclass
class Applied:
    """One server-side apply: the object the server returned and the warnings it sent."""

    obj: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def server_side_apply(
    dynamic: DynamicClient, obj: dict[str, Any], manager: str = FIELD_MANAGER
) -> Applied:
    """``kubectl apply --server-side --force-conflicts`` for one object, keeping the server's
    ``Warning`` headers (PodSecurity ``warn`` and deprecations arrive there)."""
    resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    meta = obj["metadata"]
    path = resource.path(name=meta["name"], namespace=meta.get("namespace"))
    api = dynamic.client
    request = api.param_serialize(
        "PATCH",
        path,
        query_params=[("fieldManager", manager), ("force", "true")],
        header_params={
            "Content-Type": "application/apply-patch+yaml",
            "Accept": "application/json",
        },
        body=obj,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()
    if not 200 <= response.status <= 299:
        api.response_deserialize(response, {})  # raises ApiException with the server's message
    headers = response.getheaders()
    warnings = headers.getlist("Warning") if hasattr(headers, "getlist") else []
    return Applied(json.loads(response.data), [str(w) for w in warnings])


class NotYet(str):
    """What a probe saw while the condition does not hold yet (falsy; reported on timeout)."""

    def __bool__(self) -> bool:
        return False


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 240, every: float = 0.5
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` and the last thing
    the probe saw (it returns ``NotYet("...")``, or None, to keep waiting)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiException as exc:
            value, last = None, f"HTTP {exc.status}: {exc.reason}"
        if value:
            return value
        if isinstance(value, NotYet):
            last = value
        time.sleep(every)
    pytest.fail(f"{what}: not reached within {timeout:.0f}s (last: {last})")


TEST_LABEL = "portal.test/stack"


def render(stack: str, out: Path, project_dir: Path = REPO) -> list[dict[str, Any]]:
    """The stack's objects in apply order, as ``make manifests`` writes them (the stack file of
    ``project_dir``)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.render",
            "--stack",
            stack,
            "--out",
            str(out),
            "--project-dir",
            str(project_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"render {stack} failed: {proc.stderr}"
    return [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]


def volumes_for(deployed_objects: list[dict[str, Any]], stack: str) -> list[dict[str, Any]]:
    """One PersistentVolume per claim the StatefulSets will make, pre-bound to that claim."""
    volumes = []
    for sts in (o for o in deployed_objects if o["kind"] == "StatefulSet"):
        namespace, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        for template in sts["spec"].get("volumeClaimTemplates", []):
            spec = template["spec"]
            for ordinal in range(sts["spec"].get("replicas", 1)):
                claim = f"{template['metadata']['name']}-{name}-{ordinal}"
                volume = {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"{namespace}-{claim}", "labels": {TEST_LABEL: stack}},
                    "spec": {
                        "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                        "accessModes": spec["accessModes"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "claimRef": {"namespace": namespace, "name": claim},
                        "hostPath": {"path": f"/var/lib/portal-volumes/{namespace}/{claim}"},
                    },
                }
                if spec.get("storageClassName"):
                    volume["spec"]["storageClassName"] = spec["storageClassName"]
                volumes.append(volume)
    return volumes


def remove_previous(core: client.CoreV1Api, namespace: str, stack: str) -> None:
    """A cluster reused from ``make cluster-up`` may hold an earlier run's stack: start clean."""
    try:
        core.delete_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
    else:

        def gone() -> bool:
            try:
                core.read_namespace(namespace)
            except ApiException as exc:
                return bool(exc.status == 404)
            return False

        wait_for(f"namespace {namespace} deleted", gone)
    selector = f"{TEST_LABEL}={stack}"
    core.delete_collection_persistent_volume(label_selector=selector)
    wait_for(
        f"the {stack} test volumes deleted",
        lambda: not core.list_persistent_volume(label_selector=selector).items,
    )


def condition(obj: Any, kind: str) -> str | None:
    for condition in (obj.status.conditions or []) if obj.status else []:
        if condition.type == kind:
            return str(condition.status)
    return None


def wait_converged(kube: client.ApiClient, objects: list[dict[str, Any]], ns: str) -> None:
    """Every Deployment and StatefulSet of ``objects`` available, every Job complete."""
    apps, batch = client.AppsV1Api(kube), client.BatchV1Api(kube)

    def of_kind(kind: str) -> list[dict[str, Any]]:
        return [o for o in objects if o["kind"] == kind]

    for obj in of_kind("Deployment"):
        name = obj["metadata"]["name"]

        def deployment_done(name: str = name) -> str | None:
            d = apps.read_namespaced_deployment(name, ns)
            want = d.spec.replicas or 0
            s = d.status
            done = (
                s.observed_generation == d.metadata.generation
                and (s.updated_replicas or 0) == want
                and (s.ready_replicas or 0) == want
                and (s.available_replicas or 0) == want
                and condition(d, "Available") == "True"
            )
            return "done" if done else NotYet(f"{want} wanted; status {s.to_dict()}")

        wait_for(f"{ns}/deployment {name} available", deployment_done)
    for obj in of_kind("StatefulSet"):
        name = obj["metadata"]["name"]

        def statefulset_done(name: str = name) -> str | None:
            s = apps.read_namespaced_stateful_set(name, ns)
            want = s.spec.replicas or 0
            st = s.status
            done = (
                st.observed_generation == s.metadata.generation
                and (st.ready_replicas or 0) == want
                and (st.available_replicas or 0) == want
                and st.current_revision == st.update_revision
            )
            return "done" if done else NotYet(f"{want} wanted; status {st.to_dict()}")

        wait_for(f"{ns}/statefulset {name} ready", statefulset_done)
    for obj in of_kind("Job"):
        name = obj["metadata"]["name"]

        def job_done(name: str = name) -> str | None:
            job = batch.read_namespaced_job(name, ns)
            done = condition(job, "Complete") == "True"
            return "done" if done else NotYet(f"status {job.status.to_dict()}")

        wait_for(f"{ns}/job {name} complete", job_done)


def stack_project(directory: Path, stack: str, **values: Any) -> Path:
    """A project directory holding this repository's ``Pulumi.yaml`` and ``Pulumi.<stack>.yaml``
    with the given ``portal:`` keys replaced (``namespace="..."``, ``canary={...}``): what
    ``portalctl --project-dir`` and ``render(..., project_dir)`` read."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Pulumi.yaml", directory / "Pulumi.yaml")
    doc = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    for key, value in values.items():
        doc["config"][f"portal:{key}"] = value
    (directory / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def stack_values(stack: str, key: str) -> Any:
    """This repository's ``portal:<key>`` of ``Pulumi.<stack>.yaml``."""
    doc = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    return doc["config"][f"portal:{key}"]


def apply_stack(
    kube: client.ApiClient, dynamic: DynamicClient, objects: list[dict[str, Any]], label: str
) -> list[Applied]:
    """The rendered objects applied to a fresh namespace (an earlier run's removed first), with
    a PersistentVolume per StatefulSet claim labelled ``label``."""
    core = client.CoreV1Api(kube)
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
    remove_previous(core, namespace, label)
    for volume in volumes_for(objects, label):
        core.create_persistent_volume(volume)
    return [server_side_apply(dynamic, obj) for obj in objects]


RELEASE_NAMESPACE = "portal-release"


@pytest.fixture(scope="session")
def release_stack(
    kube: client.ApiClient,
    dynamic: DynamicClient,
    control_plane: Any,
    data_plane: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """Staging in its own namespace on the real control plane, every workload a real process
    where one exists, seeded, under steady load through the ingress controller; ``portalctl``
    runs with the README's Role (``tests/cluster/release.py``)."""
    from tests.cluster.release import deploy_release_stack

    workdir = tmp_path_factory.mktemp("release-stack")
    stack = deploy_release_stack(
        kube, dynamic, control_plane, data_plane, RELEASE_NAMESPACE, workdir
    )
    try:
        yield stack
    finally:
        stack.stop()
        data_plane.disable(RELEASE_NAMESPACE)
