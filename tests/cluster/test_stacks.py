"""The objects ``pulumi up`` creates for staging and prod, applied to a real API server.

Each stack's rendered objects (``python -m components.render``, the same run as ``make
manifests``) go to the real kube-apiserver with server-side apply, each stack in its own
namespace; the real admission (PodSecurity ``restricted`` from the Namespace's own labels), the
real controllers and scheduler, and kwok's node and pod stages then decide what happens to them.
There is no storage provisioner: the test creates one PersistentVolume per claim, as an operator
of a cluster without dynamic provisioning does.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.cluster.conftest import (
    Applied,
    NotYet,
    condition,
    remove_previous,
    render,
    server_side_apply,
    volumes_for,
    wait_converged,
    wait_for,
)

STACKS = ("staging", "prod")


@dataclass
class Deployed:
    stack: str
    namespace: str
    objects: list[dict[str, Any]]
    applied: list[Applied]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def deployed(
    control_plane: Any, kube: client.ApiClient, dynamic: DynamicClient, tmp_path_factory
) -> dict[str, Deployed]:
    """Both stacks applied (each object once, in the rendered order) and converged."""
    core = client.CoreV1Api(kube)
    result = {}
    for stack in STACKS:
        objects = render(stack, tmp_path_factory.mktemp(f"manifests-{stack}"))
        namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
        remove_previous(core, namespace, stack)
        for volume in volumes_for(objects, stack):
            core.create_persistent_volume(volume)
        applied = [server_side_apply(dynamic, obj) for obj in objects]
        result[stack] = Deployed(stack, namespace, objects, applied)
    for stack in STACKS:
        wait_converged(kube, result[stack].objects, result[stack].namespace)
    return result


@pytest.mark.parametrize("stack", STACKS)
def test_namespace_enforces_the_restricted_pod_security_standard(deployed, kube, stack):
    namespace = client.CoreV1Api(kube).read_namespace(deployed[stack].namespace)
    labels = namespace.metadata.labels
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels


@pytest.mark.parametrize("stack", STACKS)
def test_every_object_is_accepted_without_warnings(deployed, stack):
    """PodSecurity ``warn`` and API deprecations arrive as warnings on the apply."""
    warned = {
        f"{a.obj['kind']}/{a.obj['metadata']['name']}": a.warnings
        for a in deployed[stack].applied
        if a.warnings
    }
    assert warned == {}


@pytest.mark.parametrize("stack", STACKS)
def test_restricted_admission_admits_every_pod(deployed, kube, stack):
    """Every workload has all its pods, created by its controller through the real PodSecurity
    admission, and no controller reported a refused pod."""
    ns = deployed[stack].namespace
    core = client.CoreV1Api(kube)
    refused = [
        f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}"
        for e in core.list_namespaced_event(ns).items
        if e.reason == "FailedCreate"
    ]
    assert refused == []
    pods = core.list_namespaced_pod(ns).items
    for kind in ("Deployment", "StatefulSet"):
        for obj in deployed[stack].of_kind(kind):
            selector = obj["spec"]["selector"]["matchLabels"]
            mine = [
                p
                for p in pods
                if all((p.metadata.labels or {}).get(k) == v for k, v in selector.items())
                and p.status.phase == "Running"
            ]
            assert len(mine) == obj["spec"].get("replicas", 1), f"{kind}/{obj['metadata']['name']}"
    migration = [p for p in pods if p.metadata.labels.get("job-name")]
    assert len(migration) >= 2, "the roles and migration Jobs created no pod"
    assert {p.status.phase for p in migration} == {"Succeeded"}


@pytest.mark.parametrize("stack", STACKS)
def test_statefulset_claims_bind_to_the_provided_volumes(deployed, kube, stack):
    ns = deployed[stack].namespace
    claims = client.CoreV1Api(kube).list_namespaced_persistent_volume_claim(ns).items
    expected = {v["spec"]["claimRef"]["name"] for v in volumes_for(deployed[stack].objects, stack)}
    assert expected, "the stack has no StatefulSet claims to bind"
    assert {c.metadata.name: c.status.phase for c in claims} == dict.fromkeys(expected, "Bound")
    for claim in claims:
        assert claim.spec.volume_name == f"{ns}-{claim.metadata.name}"


@pytest.mark.parametrize("stack", STACKS)
def test_deployments_and_statefulsets_report_available(deployed, kube, stack):
    apps = client.AppsV1Api(kube)
    ns = deployed[stack].namespace
    for obj in deployed[stack].of_kind("Deployment"):
        d = apps.read_namespaced_deployment(obj["metadata"]["name"], ns)
        assert condition(d, "Available") == "True", obj["metadata"]["name"]
        assert (d.status.available_replicas or 0) == obj["spec"].get("replicas", 1)
    for obj in deployed[stack].of_kind("StatefulSet"):
        s = apps.read_namespaced_stateful_set(obj["metadata"]["name"], ns)
        assert s.status.available_replicas == obj["spec"].get("replicas", 1)
    stable = apps.read_namespaced_deployment("portal-stable", ns)
    assert (stable.status.available_replicas or 0) >= 2


@pytest.mark.parametrize("stack", STACKS)
def test_migration_job_completes(deployed, kube, stack):
    batch = client.BatchV1Api(kube)
    jobs = {j["metadata"]["name"] for j in deployed[stack].of_kind("Job")}
    assert jobs == {"postgres-roles", "portal-migrate-1-0-0"}
    for name in jobs:
        live = batch.read_namespaced_job(name, deployed[stack].namespace)
        assert condition(live, "Complete") == "True", name
        assert live.status.succeeded == 1, name


@pytest.mark.parametrize("stack", STACKS)
def test_services_have_endpoints_at_the_ready_pods(deployed, kube, control_plane, stack):
    """Each Service's EndpointSlices list exactly its ready pods' IPs (from the node's pod CIDR)
    with the named target ports resolved; the canary Service (no canary pods) lists none."""
    ns = deployed[stack].namespace
    core, discovery = client.CoreV1Api(kube), client.DiscoveryV1Api(kube)
    pods = core.list_namespaced_pod(ns).items
    cidr = ipaddress.ip_network(control_plane.pod_cidr)
    for svc in deployed[stack].of_kind("Service"):
        name, selector = svc["metadata"]["name"], svc["spec"]["selector"]
        ready: set[str] = {
            str(p.status.pod_ip)
            for p in pods
            if all((p.metadata.labels or {}).get(k) == v for k, v in selector.items())
            and condition(p, "Ready") == "True"
        }
        assert all(ipaddress.ip_address(ip) in cidr for ip in ready), ready

        def listed(name: str = name, ready: set[str] = ready) -> set[str] | NotYet:
            slices = discovery.list_namespaced_endpoint_slice(
                ns, label_selector=f"kubernetes.io/service-name={name}"
            ).items
            addresses = {
                a
                for s in slices
                for e in s.endpoints or []
                if e.conditions.ready
                for a in e.addresses
            }
            ports = all(s.ports for s in slices if s.endpoints)
            return addresses if addresses == ready and ports else NotYet(f"listed {addresses}")

        if name.endswith("-canary"):
            assert ready == set(), "the canary Service selects pods before any release"
            continue
        assert ready, f"service {name} selects no ready pod"
        wait_for(f"{ns}/service {name} endpoints at {sorted(ready)}", listed, timeout=60)


@pytest.mark.parametrize("stack", STACKS)
def test_second_apply_changes_nothing(deployed, kube, dynamic, stack):
    """Applying the same objects again writes nothing: every object keeps its resourceVersion,
    except status the controllers keep writing, where the generation (spec) stays the same."""
    status_writers = {
        "Deployment",
        "StatefulSet",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for obj in deployed[stack].objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        before = resource.get(name=meta["name"], namespace=meta.get("namespace")).to_dict()
        after = server_side_apply(dynamic, obj).obj
        what = f"{obj['kind']}/{meta['name']}"
        if obj["kind"] in status_writers:
            assert after["metadata"].get("generation") == before["metadata"].get("generation"), (
                f"{what} spec changed by a second apply"
            )
        else:
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], (
                f"{what} rewritten by a second apply"
            )


VIOLATING_CONTAINER = {
    "name": "shell",
    "image": "busybox:1.36",
    "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}},
}
VIOLATIONS = (
    "host namespaces (hostNetwork=true)",
    'unrestricted capabilities (container "shell" must set securityContext.capabilities.drop',
    'must not include "NET_ADMIN" in securityContext.capabilities.add',
    'runAsUser=0 (container "shell" must not set runAsUser=0)',
    "allowPrivilegeEscalation != false",
    "runAsNonRoot != true",
    "seccompProfile",
)


def test_restricted_admission_refuses_a_root_pod_on_the_host_network(deployed, kube):
    """A pod that breaks ``restricted`` is refused by the real admission, which names each
    violation."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "violates-restricted"},
        "spec": {"hostNetwork": True, "containers": [VIOLATING_CONTAINER]},
    }
    core = client.CoreV1Api(kube)
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(deployed["staging"].namespace, pod)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    for violation in VIOLATIONS:
        assert violation in message, f"{violation!r} not named in: {message}"


def test_a_violating_workload_is_warned_on_apply_and_its_pods_refused(deployed, kube, dynamic):
    """The checks above can fail: a Deployment whose template breaks ``restricted`` is accepted
    with a PodSecurity warning, and its ReplicaSet reports the refused pods."""
    ns = deployed["staging"].namespace
    labels = {"app.kubernetes.io/name": "violates-restricted"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "violates-restricted", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"hostNetwork": True, "containers": [VIOLATING_CONTAINER]},
            },
        },
    }
    try:
        applied = server_side_apply(dynamic, deployment)
        assert any("would violate PodSecurity" in w for w in applied.warnings), applied.warnings
        core = client.CoreV1Api(kube)

        def refused() -> str | None:
            events = core.list_namespaced_event(ns).items
            return next(
                (
                    str(e.message)
                    for e in events
                    if e.reason == "FailedCreate"
                    and e.involved_object.name.startswith("violates-restricted")
                ),
                NotYet(f"{len(events)} events"),
            )

        message = wait_for("a FailedCreate event for the violating pods", refused, timeout=60)
        assert 'violates PodSecurity "restricted:latest"' in message
        assert not [
            p
            for p in core.list_namespaced_pod(ns).items
            if p.metadata.name.startswith("violates-restricted")
        ]
    finally:
        client.AppsV1Api(kube).delete_namespaced_deployment("violates-restricted", ns)


# What each program that reads the API lists and watches, from the stack's own configuration:
# Prometheus from its kubernetes_sd_configs, kube-state-metrics from its --resources flag.
SD_ROLE_RESOURCES = {
    "pod": ("", "pods"),
    "service": ("", "services"),
    "endpoints": ("", "endpoints"),
    "endpointslice": ("discovery.k8s.io", "endpointslices"),
    "node": ("", "nodes"),
    "ingress": ("networking.k8s.io", "ingresses"),
}
KSM_RESOURCES = {
    "pods": ("", "pods"),
    "deployments": ("apps", "deployments"),
    "replicasets": ("apps", "replicasets"),
    "statefulsets": ("apps", "statefulsets"),
    "jobs": ("batch", "jobs"),
    "services": ("", "services"),
    "configmaps": ("", "configmaps"),
    "secrets": ("", "secrets"),
    "horizontalpodautoscalers": ("autoscaling", "horizontalpodautoscalers"),
    "poddisruptionbudgets": ("policy", "poddisruptionbudgets"),
    "persistentvolumeclaims": ("", "persistentvolumeclaims"),
}


def api_reads(deployed: Deployed) -> dict[str, set[tuple[str, str, str]]]:
    """Workload name -> the (group, resource, namespace) it lists and watches."""
    needs: dict[str, set[tuple[str, str, str]]] = {}
    config_map = next(
        o for o in deployed.of_kind("ConfigMap") if "prometheus.yml" in o.get("data", {})
    )
    prometheus = yaml.safe_load(config_map["data"]["prometheus.yml"])
    for job in prometheus["scrape_configs"]:
        for sd in job.get("kubernetes_sd_configs", []):
            group, resource = SD_ROLE_RESOURCES[sd["role"]]
            for namespace in sd.get("namespaces", {}).get("names", [deployed.namespace]):
                needs.setdefault("prometheus", set()).add((group, resource, namespace))
    for obj in deployed.of_kind("Deployment"):
        for container in obj["spec"]["template"]["spec"]["containers"]:
            flags = dict(
                a.removeprefix("--").split("=", 1) for a in container.get("args", []) if "=" in a
            )
            if "resources" in flags:
                for name in flags["resources"].split(","):
                    group, resource = KSM_RESOURCES[name]
                    for namespace in flags.get("namespaces", deployed.namespace).split(","):
                        needs.setdefault(obj["metadata"]["name"], set()).add(
                            (group, resource, namespace)
                        )
    return needs


@pytest.mark.parametrize("stack", STACKS)
def test_programs_that_read_the_api_hold_a_token_and_the_rbac_they_need(deployed, kube, stack):
    """Prometheus's pod discovery and kube-state-metrics run under the stack's ServiceAccounts:
    the admitted pod carries the account's token, and the real RBAC authorizer allows every
    list and watch their configuration implies (and no write)."""
    ns = deployed[stack].namespace
    core, authz = client.CoreV1Api(kube), client.AuthorizationV1Api(kube)
    needs = api_reads(deployed[stack])
    assert set(needs) == {"prometheus", "kube-state-metrics"}, needs
    pods = core.list_namespaced_pod(ns).items

    def allowed(account: str, verb: str, group: str, resource: str, namespace: str) -> bool:
        review = authz.create_subject_access_review(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": f"system:serviceaccount:{ns}:{account}",
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                    "resourceAttributes": {
                        "verb": verb,
                        "group": group,
                        "resource": resource,
                        "namespace": namespace,
                    },
                },
            }
        )
        return bool(review.status.allowed)

    for workload, reads in needs.items():
        pod = next(
            p for p in pods if (p.metadata.labels or {}).get("app.kubernetes.io/name") == workload
        )
        account = pod.spec.service_account_name
        assert account == workload, f"{workload} runs as {account}"
        mounts = {m.mount_path for c in pod.spec.containers for m in c.volume_mounts or []}
        assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts, (
            f"{workload}: no service account token mounted"
        )

        for group, resource, namespace in sorted(reads):
            for verb in ("list", "watch"):
                assert allowed(account, verb, group, resource, namespace), (
                    f"{workload} may not {verb} {resource} in {namespace}"
                )
            assert not allowed(account, "delete", group, resource, namespace), (
                f"{workload} may delete {resource}"
            )
