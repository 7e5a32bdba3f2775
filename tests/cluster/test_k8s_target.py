"""The Kubernetes target's own promises against the real API server, on the objects the Pulumi
program renders for staging, in a namespace where kwok alone plays the kubelet (no processes:
these tests are about what the API server and its controllers report, not about traffic)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from contract.config import StackConfig, load_stack
from rollout.k8s import kubernetes_target
from rollout.ports import ReleaseSpec, Target, TargetError
from tests.cluster.conftest import (
    NotYet,
    apply_stack,
    render,
    stack_project,
    stack_values,
    wait_converged,
    wait_for,
)

NAMESPACE = "portal-target"
STACK = "staging"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    return stack_project(tmp_path_factory.mktemp("target"), STACK, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def deployed(
    control_plane: Any, kube: client.ApiClient, dynamic: DynamicClient, project, tmp_path_factory
) -> list[dict[str, Any]]:
    objects = render(STACK, tmp_path_factory.mktemp("target-manifests"), project)
    apply_stack(kube, dynamic, objects, NAMESPACE)
    wait_converged(kube, objects, NAMESPACE)
    return objects


def target_for(kube: client.ApiClient, cfg: StackConfig, timeout_s: float = 120) -> Target:
    return kubernetes_target(cfg, kube, poll_s=0.2, timeout_s=timeout_s)


def test_a_canary_that_cannot_be_scheduled_times_out_naming_what_is_missing(
    deployed, kube, project
):
    """The scheduler finds no node for a canary asking more CPU than the node has: the rollout
    wait ends at its deadline with what the Deployment's status said."""
    cfg = load_stack(STACK, project)
    apps = client.AppsV1Api(kube)
    names = cfg.names

    def resources(value: dict[str, Any]) -> dict[str, Any]:
        container = {"name": names.container, "resources": value}
        return {"spec": {"template": {"spec": {"containers": [container]}}}}

    rendered = next(
        o for o in deployed if o["kind"] == "Deployment" and o["metadata"]["name"] == names.canary
    )
    original = rendered["spec"]["template"]["spec"]["containers"][0]["resources"]
    apps.patch_namespaced_deployment(
        names.canary, NAMESPACE, resources({"requests": {"cpu": "100"}, "limits": {"cpu": "100"}})
    )
    target = target_for(kube, cfg, timeout_s=8)
    try:
        with pytest.raises(TargetError, match=rf"Deployment {names.canary} did not roll out .*0/1"):
            target.workloads.deploy_canary(
                ReleaseSpec("r", "2.0.0", "ghcr.io/acme/portal:2.0.0"), 1
            )
    finally:
        target.workloads.rollback()
        apps.patch_namespaced_deployment(names.canary, NAMESPACE, resources(original))


def test_replica_mode_approximates_the_weight_with_pod_counts(deployed, kube, project):
    values = {"traffic": {**stack_values(STACK, "traffic"), "mode": "replicas"}}
    cfg = load_stack(STACK, stack_project(project, STACK, namespace=NAMESPACE, **values))
    target = target_for(kube, cfg)
    apps = client.AppsV1Api(kube)
    try:
        target.router.set_weight(50)
        canary = apps.read_namespaced_deployment(cfg.names.canary, NAMESPACE)
        stable = apps.read_namespaced_deployment(cfg.names.stable, NAMESPACE)
        assert (canary.spec.replicas, stable.spec.replicas) == (1, 1)

        def one_ready_each() -> bool | NotYet:
            ready = tuple(
                apps.read_namespaced_deployment(name, NAMESPACE).status.ready_replicas
                for name in (cfg.names.canary, cfg.names.stable)
            )
            # stable's surplus pod may still be terminating when the scale returns
            return ready == (1, 1) or NotYet(f"ready (canary, stable): {ready}")

        wait_for("one ready pod on each track", one_ready_each, timeout=120)
        assert target.router.weight() == 50
        target.workloads.rollback()
        canary = apps.read_namespaced_deployment(cfg.names.canary, NAMESPACE)
        stable = apps.read_namespaced_deployment(cfg.names.stable, NAMESPACE)
        assert (canary.spec.replicas, stable.spec.replicas) == (0, cfg.app.replicas)
    finally:
        stack_project(project, STACK, namespace=NAMESPACE)


def test_a_weight_out_of_range_is_refused_and_the_ingress_keeps_its_weight(deployed, kube, project):
    cfg = load_stack(STACK, project)
    target = target_for(kube, cfg)
    target.router.set_weight(25)
    assert target.router.weight() == 25
    with pytest.raises(TargetError, match="percentage"):
        target.router.set_weight(150)
    assert target.router.weight() == 25
    target.router.set_weight(0)


def test_an_api_refusal_is_one_line_naming_the_object(deployed, kube, project):
    """What the API server refuses reaches the user as one line: the object, the HTTP status and
    the server's message (here a patch the real validation rejects)."""
    cfg = load_stack(STACK, project)
    target = target_for(kube, cfg)
    with pytest.raises(TargetError) as refused:
        target.workloads.scale("canary", -1)
    message = str(refused.value)
    assert message.startswith(f"scaling Deployment {cfg.names.canary}: HTTP 422")
    assert "\n" not in message
    with pytest.raises(ApiException):
        client.AppsV1Api(kube).patch_namespaced_deployment_scale(
            cfg.names.canary, NAMESPACE, {"spec": {"replicas": -1}}
        )
