"""The data plane under the release tests keeps a kubelet's promises: a pod of an enabled
namespace is a real process at the IP kwok gave it, reached through the API server's pod and
service proxies; it is ready only while its readiness probe answers; a Job's pod ends with its
process's exit code and its output is the pod's log; a deleted pod's process and network
namespace are gone; pods elsewhere stay kwok's."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.conftest import NotYet, condition, remove_previous, wait_for
from tests.dataplane.controller import ANNOTATION
from tests.dataplane.network import namespaces

NAMESPACE = "portal-data-plane-test"
PLAIN = "portal-data-plane-off"
SECURE_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "seccompProfile": {"type": "RuntimeDefault"},
}
SECURE_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
LABELS = {"app.kubernetes.io/name": "pushgateway"}


def pushgateway(replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "pushgateway"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "securityContext": SECURE_POD,
                    "containers": [
                        {
                            "name": "pushgateway",
                            "image": "prom/pushgateway:v1.10.0",
                            "args": ["--web.listen-address=:9091"],
                            "ports": [{"name": "http", "containerPort": 9091}],
                            "readinessProbe": {
                                "httpGet": {"path": "/-/ready", "port": "http"},
                                "failureThreshold": 1,
                            },
                            "securityContext": SECURE_CONTAINER,
                        }
                    ],
                },
            },
        },
    }


def job(name: str, code: int) -> dict[str, Any]:
    script = f"import sys; print('migrating from job {name}'); sys.exit({code})"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {**SECURE_POD, "runAsUser": 10001},
                    "containers": [
                        {
                            "name": "migrate",
                            "image": "ghcr.io/acme/portal:1.0.0",
                            "command": ["python", "-c", script],
                            "securityContext": SECURE_CONTAINER,
                        }
                    ],
                }
            },
        },
    }


@pytest.fixture(scope="module")
def enabled(data_plane: Any, kube: client.ApiClient) -> Iterator[client.CoreV1Api]:
    core = client.CoreV1Api(kube)
    for ns in (NAMESPACE, PLAIN):
        remove_previous(core, ns, ns)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    data_plane.enable(NAMESPACE)
    yield core
    data_plane.disable(NAMESPACE)
    for ns in (NAMESPACE, PLAIN):
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


def ready_pods(core: client.CoreV1Api, namespace: str, want: int) -> list[Any] | NotYet:
    pods = [
        p
        for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name").items
        if not p.metadata.deletion_timestamp
    ]
    ready = [p for p in pods if condition(p, "Ready") == "True"]
    if len(ready) == want == len(pods):
        return ready
    return NotYet(f"{len(ready)} of {len(pods)} ready, want {want}")


def test_a_pod_is_a_process_at_its_ip_ready_only_while_its_probe_answers(enabled, kube, data_plane):
    core, apps = enabled, client.AppsV1Api(kube)
    apps.create_namespaced_deployment(NAMESPACE, pushgateway())
    (pod,) = wait_for("the pushgateway pod ready", lambda: ready_pods(core, NAMESPACE, 1))
    assert pod.metadata.annotations[ANNOTATION] == "process"
    runtime = data_plane.pod(NAMESPACE, pod.metadata.name)
    assert runtime is not None and runtime.ip == pod.status.pod_ip
    # the API server reaches the process through its pod proxy, at the pod's IP
    answer = core.connect_get_namespaced_pod_proxy_with_path(
        f"{pod.metadata.name}:9091", NAMESPACE, "-/ready", _preload_content=False
    )
    assert answer.status == 200
    process = runtime.containers[0].popen
    os.killpg(process.pid, signal.SIGKILL)

    def not_ready() -> str | NotYet:
        live = core.read_namespaced_pod(pod.metadata.name, NAMESPACE)
        status = live.status.container_statuses[0]
        if condition(live, "Ready") == "False":
            return "not ready"
        return NotYet(f"ready {status.ready}, restarts {status.restart_count}")

    wait_for("the pod not ready once its process is killed", not_ready, timeout=60)

    def back() -> str | NotYet:
        live = core.read_namespaced_pod(pod.metadata.name, NAMESPACE)
        restarts = live.status.container_statuses[0].restart_count
        if condition(live, "Ready") == "True" and restarts == 1:
            return "restarted"
        return NotYet(f"restarts {restarts}, ready {condition(live, 'Ready')}")

    wait_for("the process restarted and ready again", back, timeout=60)


def test_a_pod_marked_not_ready_by_the_node_controller_is_reported_ready_again(enabled):
    """The node controller marks every pod of a node it lost touch with not ready (after an API
    server outage longer than the node's grace period, say). The processes never stopped, so the
    data plane reports them ready again, as a kubelet's status manager does; a pod left not
    ready would stall every rollout after it."""
    core = enabled
    (pod,) = wait_for("the pushgateway pod ready", lambda: ready_pods(core, NAMESPACE, 1))
    marked = {"type": "Ready", "status": "False", "reason": "NodeNotReady"}
    core.patch_namespaced_pod_status(
        pod.metadata.name, NAMESPACE, {"status": {"conditions": [marked]}}
    )
    wait_for("the pod ready again", lambda: ready_pods(core, NAMESPACE, 1), timeout=60)


def test_a_job_pod_ends_with_its_exit_code_and_its_output_is_the_pod_log(enabled, kube):
    core, batch = enabled, client.BatchV1Api(kube)
    batch.create_namespaced_job(NAMESPACE, job("succeeds", 0))
    batch.create_namespaced_job(NAMESPACE, job("fails", 3))

    def finished(name: str, kind: str) -> Any:
        live = batch.read_namespaced_job(name, NAMESPACE)
        return live if condition(live, kind) == "True" else NotYet(str(live.status.to_dict()))

    wait_for("Job succeeds Complete", lambda: finished("succeeds", "Complete"), timeout=120)
    failed = wait_for("Job fails Failed", lambda: finished("fails", "Failed"), timeout=120)
    assert failed.status.failed == 1
    (pod,) = core.list_namespaced_pod(NAMESPACE, label_selector="job-name=fails").items
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    (done,) = core.list_namespaced_pod(NAMESPACE, label_selector="job-name=succeeds").items
    log = core.read_namespaced_pod_log(done.metadata.name, NAMESPACE)
    assert "migrating from job succeeds" in log


def test_a_deleted_pod_leaves_no_process_and_no_network_namespace(enabled, kube, data_plane):
    core, apps = enabled, client.AppsV1Api(kube)
    (pod,) = wait_for("the pushgateway pod ready", lambda: ready_pods(core, NAMESPACE, 1))
    runtime = data_plane.pod(NAMESPACE, pod.metadata.name)
    netns, process = runtime.link.netns, runtime.containers[0].popen
    apps.patch_namespaced_deployment_scale("pushgateway", NAMESPACE, {"spec": {"replicas": 0}})

    def gone() -> str | NotYet:
        if process.poll() is None or netns in namespaces():
            return NotYet(f"process exit {process.poll()}, namespaces {sorted(namespaces())}")
        return "gone"

    wait_for("the process and the namespace gone", gone, timeout=60)
    assert data_plane.pod(NAMESPACE, pod.metadata.name) is None


def test_pods_of_other_namespaces_stay_kwoks(enabled, kube):
    core, apps = enabled, client.AppsV1Api(kube)
    apps.create_namespaced_deployment(PLAIN, pushgateway())
    (pod,) = wait_for("the pod ready through kwok alone", lambda: ready_pods(core, PLAIN, 1))
    assert ANNOTATION not in (pod.metadata.annotations or {})
