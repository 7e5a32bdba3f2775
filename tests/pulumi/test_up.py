"""``pulumi up`` of staging and prod on the real control plane, with the engine and providers
built here (``make toolchain``) and the provider's await on.

Each stack runs in a copy of the project (``Pulumi.yaml``, its stack file, ``__main__.py``; the
components come from the repository) through ``scripts/stack.py``, the command the README gives,
in its own namespace (``portal-staging``, ``portal-prod``), with its own state and passphrase.
The control plane has no storage provisioner: ``scripts/stack.py volumes`` first provides one
PersistentVolume per claim, as the README has an operator of such a cluster do. The release
engine's part runs in this process through the Kubernetes target the way ``portalctl release``
drives it, with no gate reading a pod and its release events pushed to a Pushgateway on loopback
instead of the one in the cluster: nothing listens at kwok's pod addresses here, and a request
there (the API server's proxy to a pod) would leave the machine. Releases through real gates,
on a stack whose pods the data plane runs as real processes, are ``test_release_after_up.py``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import CANARY_WEIGHT_ANNOTATION as WEIGHT
from rollout.engine import Outcome, OutcomeStatus, ReleaseEngine
from rollout.k8s import kubernetes_target
from rollout.local.processes import free_port
from rollout.local.servers import PushgatewayServer
from rollout.ports import ReleaseSpec, Target
from rollout.telemetry import PrometheusTelemetry
from tests.cluster.conftest import NotYet, remove_previous, wait_for
from tests.conftest import REPO
from tests.pulumi.stacks import Stack, created, managed, project_stack

STACKS = ("staging", "prod")
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
SKIP_AWAIT = "pulumi.com/skipAwait"


def plaintext(value: Any) -> str:
    """A secret output of ``pulumi stack export --show-secrets``: the decrypted envelope."""
    assert isinstance(value, dict) and "plaintext" in value, value
    return str(json.loads(value["plaintext"]))


@pytest.fixture(scope="module")
def stacks(
    control_plane: Any, kube: client.ApiClient, pulumi_toolchain: Any, tmp_path_factory: Any
) -> Iterator[dict[str, Stack]]:
    """Both stacks up (staging, then prod), each in a namespace cleared first; destroyed at the
    end when a test left them up."""
    core = client.CoreV1Api(kube)
    result: dict[str, Stack] = {}
    for name in STACKS:
        root = tmp_path_factory.mktemp(f"pulumi-{name}")
        stack = project_stack(name, root, control_plane, pulumi_toolchain)
        remove_previous(core, stack.cfg.namespace, name)
        stack.op("volumes")
        stack.up = stack.op("up")
        result[name] = stack
    try:
        yield result
    finally:
        for stack in result.values():
            if any(r["type"] != "pulumi:pulumi:Stack" for r in stack.resources()):
                stack.op("destroy", check=False)


# ------------------------------------------------------------------------------------ up


@pytest.mark.parametrize("name", STACKS)
def test_up_creates_every_resource_and_waits_for_each_workload(stacks, kube, name):
    """The provider's await decided when each object was done: nothing skips it, and by the time
    ``up`` returned every Deployment was available, every StatefulSet ready, the migration Job
    complete and each Ingress had its address."""
    stack = stacks[name]
    state = stack.resources()
    providers = [r for r in state if r["type"].startswith("pulumi:providers:")]
    assert created(stack.up) == len(state) - len(providers), stack.up.stdout[-3000:]
    ns = stack.cfg.namespace
    apps, batch = client.AppsV1Api(kube), client.BatchV1Api(kube)
    net = client.NetworkingV1Api(kube)
    kinds = {r["type"].split(":")[-1] for r in state}
    assert {"Deployment", "StatefulSet", "Job", "Ingress", "RandomPassword"} <= kinds, kinds
    for dep in apps.list_namespaced_deployment(ns).items:
        assert SKIP_AWAIT not in (dep.metadata.annotations or {}), dep.metadata.name
        want = dep.spec.replicas or 0
        assert (dep.status.available_replicas or 0) == want, (dep.metadata.name, dep.status)
    for sts in apps.list_namespaced_stateful_set(ns).items:
        assert (sts.status.ready_replicas or 0) == sts.spec.replicas, sts.metadata.name
    jobs = batch.list_namespaced_job(ns).items
    # the database's roles, then the migration
    job_names = sorted(str(j.metadata.name) for j in jobs)
    cfg = stack.cfg
    wanted = [cfg.names.postgres_roles, cfg.names.migration_job(cfg.app.version)]
    assert job_names == sorted(wanted), job_names
    assert [j.status.succeeded for j in jobs] == [1, 1], job_names
    for ing in net.list_namespaced_ingress(ns).items:
        assert ing.status.load_balancer.ingress, ing.metadata.name


@pytest.mark.parametrize("name", STACKS)
def test_every_output_portalctl_relies_on_names_the_live_object(stacks, kube, name):
    """``portalctl`` finds the stack's objects by the names the config model derives; the stack
    outputs an operator reads must be those names, and the objects must be there."""
    stack = stacks[name]
    cfg, names = stack.cfg, stack.cfg.names
    out = stack.outputs()
    ns = cfg.namespace
    assert out["namespace"] == ns
    assert out["stableDeployment"] == names.stable
    assert out["canaryDeployment"] == names.canary
    assert out["containerName"] == names.container
    assert out["ingress"] == names.ingress
    assert out["canaryIngress"] == names.canary_ingress
    assert out["services"] == {"stable": names.stable, "canary": names.canary}
    assert out["appSecret"] == names.app_secret
    assert out["migrationJob"] == names.migration_job(cfg.app.version)
    assert (out["prometheusService"], out["prometheusPort"]) == (
        names.prometheus,
        names.prometheus_port,
    )
    assert (out["pushgatewayService"], out["pushgatewayPort"]) == (
        names.pushgateway,
        names.pushgateway_port,
    )
    assert out["trafficMode"] == cfg.traffic.mode
    assert out["appVersion"] == cfg.app.version
    assert out["stableImage"] == out["images"]["app"] == cfg.app.stable_image
    assert out["url"] == f"http://{cfg.traffic.host}" or out["url"] == f"https://{cfg.traffic.host}"

    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    net, batch = client.NetworkingV1Api(kube), client.BatchV1Api(kube)
    for deployment in (out["stableDeployment"], out["canaryDeployment"]):
        containers = apps.read_namespaced_deployment(deployment, ns).spec.template.spec.containers
        assert containers[0].name == out["containerName"], deployment
    for ingress in (out["ingress"], out["canaryIngress"]):
        net.read_namespaced_ingress(ingress, ns)
    batch.read_namespaced_job(out["migrationJob"], ns)
    core.read_namespaced_secret(out["appSecret"], ns)
    for service, port in (
        (out["prometheusService"], out["prometheusPort"]),
        (out["pushgatewayService"], out["pushgatewayPort"]),
    ):
        ports = [p.port for p in core.read_namespaced_service(service, ns).spec.ports]
        assert port in ports, (service, ports)

    # what portalctl sees through its Kubernetes target, from the stack file alone
    target = kubernetes_target(cfg, kube)
    seen = target.workloads.state()
    assert (seen.stable_version, seen.stable_image) == (out["appVersion"], out["stableImage"])
    assert (seen.canary_replicas, seen.weight) == (0, 0)
    proxy = f"/namespaces/{ns}/services/{out['prometheusService']}:{out['prometheusPort']}/proxy"
    assert target.telemetry.prometheus.base_url.endswith(proxy), target.telemetry.prometheus


@pytest.mark.parametrize("name", STACKS)
def test_a_preview_right_after_up_changes_nothing(stacks, name):
    stack = stacks[name]
    preview = stack.op("preview", "--expect-no-changes")
    assert f"{managed(stack)} unchanged" in preview.stdout, preview.stdout[-3000:]


@pytest.mark.parametrize("name", STACKS)
def test_generated_passwords_reach_their_secrets_and_stay_encrypted_in_the_state(
    stacks, kube, name
):
    stack = stacks[name]
    passwords = {
        r["urn"].rsplit("::", 1)[-1]: plaintext(r["outputs"]["result"])
        for r in stack.resources()
        if r["type"] == RANDOM_PASSWORD
    }
    # the Postgres superuser and its three roles, the two Redis users, Grafana, the API's token
    # key (one id by default), the scrape token
    assert len(passwords) == 9, passwords.keys()
    ns = stack.cfg.namespace
    core = client.CoreV1Api(kube)
    in_cluster = "\n".join(
        base64.b64decode(value).decode()
        for s in core.list_namespaced_secret(ns).items
        for value in (s.data or {}).values()
    )
    for resource, password in passwords.items():
        assert len(password) >= 20, resource
        assert password in in_cluster, f"{resource}'s result is in no Secret"
    files = [p for p in stack.state.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" and "stacks" in p.parts for p in files), files
    for path in files:
        text = path.read_text(errors="replace")
        for resource, password in passwords.items():
            assert password not in text, f"{resource}'s password in plain text in {path}"
    shown, hidden = stack.outputs(show_secrets=True), stack.outputs()
    assert shown["grafanaAdminPassword"] in passwords.values()
    assert hidden["grafanaAdminPassword"] == "[secret]"
    assert not {"adminToken", "authKeys"} & shown.keys(), "token keys stay in their Secret"


@pytest.mark.parametrize("name", STACKS)
def test_a_bad_value_in_the_stack_file_fails_preview_with_one_line_naming_the_key(stacks, name):
    """The engine's own validation of ``Pulumi.yaml`` lets the stack file through (the value has
    the declared type); the program's model refuses it, with its one line and no traceback, before
    any resource is registered. Nothing changes."""
    stack = stacks[name]
    good = stack.file.read_text()

    def bad(config: dict[str, Any]) -> None:
        config["portal:slo"]["maxErrorRate"] = 5

    stack.edit(bad)
    try:
        preview = stack.op("preview", check=False)
    finally:
        stack.file.write_text(good)
    output = preview.stdout + preview.stderr
    assert preview.returncode == 1, output[-3000:]
    message = "invalid stack config: portal:slo.maxErrorRate: 5: expected a number above 0"
    lines = {line.strip() for line in output.splitlines() if "maxErrorRate" in line}
    assert lines and all(message in line for line in lines), lines
    assert "Traceback" not in output
    assert "to create" not in output and "to update" not in output
    stack.op("preview", "--expect-no-changes")


# ------------------------------------------------------------------------------ releases


@pytest.fixture(scope="module")
def pushgateway(server_root: Path) -> Iterator[PushgatewayServer]:
    """A real Pushgateway on loopback for the release events (see the module's docstring)."""
    server = PushgatewayServer(server_root / f"push-{free_port()}", free_port()).start()
    yield server
    server.stop()


def release_target(cfg: StackConfig, kube: client.ApiClient, push: str) -> Target:
    """``portalctl``'s Kubernetes target for the stack, its events pushed to ``push``."""
    target = kubernetes_target(cfg, kube, poll_s=0.5, timeout_s=180)
    prometheus = target.telemetry.prometheus.base_url
    return replace(target, telemetry=PrometheusTelemetry(prometheus, push, rate_window="5m"))


def engine_for(stack: Stack, kube: client.ApiClient, push: str, **canary: Any) -> ReleaseEngine:
    """The release engine on the stack's cluster as ``portalctl release`` builds it (the stack
    file's config, its Kubernetes target, the stack file to rewrite on promotion), with the
    canary settings given written to the stack file first."""

    def settings(config: dict[str, Any]) -> None:
        config["portal:canary"] = {**config.get("portal:canary", {}), **canary}

    if canary:
        stack.edit(settings)
    cfg = stack.cfg
    return ReleaseEngine(cfg, release_target(cfg, kube, push), stackfile=stack.file)


def pushed(push: PushgatewayServer, version: str) -> str:
    """The release status the Pushgateway holds for ``version`` (``""`` if none)."""
    with urllib.request.urlopen(f"{push.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("portal_release_status{") and f'version="{version}"' in line:
            return str(line.rsplit(" ", 1)[-1])
    return ""


def live(stack: Stack, kube: client.ApiClient) -> dict[str, Any]:
    """What the release engine owns, as the API server has it."""
    cfg = stack.cfg
    apps, net = client.AppsV1Api(kube), client.NetworkingV1Api(kube)
    ns, names = cfg.namespace, cfg.names

    def template(name: str) -> tuple[Any, ...]:
        dep = apps.read_namespaced_deployment(name, ns)
        return (
            dep.spec.template.spec.containers[0].image,
            dep.spec.template.metadata.labels["app.kubernetes.io/version"],
            dep.spec.replicas,
        )

    annotations = net.read_namespaced_ingress(names.canary_ingress, ns).metadata.annotations
    return {
        "stable": template(names.stable),
        "canary": template(names.canary),
        "weight": annotations.get(WEIGHT),
    }


@pytest.mark.parametrize("name", STACKS)
def test_a_promotion_leaves_nothing_for_pulumi_to_change(stacks, kube, pushgateway, name):
    """A release paused for approval, then promoted: the canary ran the new version, stable runs
    it now and the stack file says so. ``pulumi preview`` sees no change at either point, and
    the next ``pulumi up`` changes no resource, only the outputs that name the version."""
    stack = stacks[name]
    cfg = stack.cfg
    version = "9.1.0"
    image = f"{cfg.app.image}:{version}"
    # the pause comes first: the promotion approves it and skips the step after it
    engine = engine_for(
        stack, kube, pushgateway.url, steps=[{"pause": True}, {"weight": 100, "analysis": "1m"}]
    )
    held: Outcome = engine.start(ReleaseSpec("", version, image))
    assert held.status == OutcomeStatus.HELD, held
    assert live(stack, kube)["canary"] == (image, version, cfg.app.canary_replicas)
    stack.op("preview", "--expect-no-changes")

    promoted = engine.request("promote", "tests")
    assert promoted is not None and promoted.status == OutcomeStatus.PROMOTED, promoted
    assert pushed(pushgateway, version) == "1"  # the release event: promoted
    assert stack.cfg.app.version == version, stack.file.read_text()
    now = live(stack, kube)
    assert now["stable"][:2] == (image, version)
    assert (now["canary"][2], now["weight"]) == (0, "0")
    stack.op("preview", "--expect-no-changes")
    up = stack.op("up", "--expect-no-changes")
    assert f"{managed(stack)} unchanged" in up.stdout, up.stdout[-3000:]
    assert live(stack, kube) == now
    out = stack.outputs()
    assert (out["appVersion"], out["stableImage"]) == (version, image)


KILLED_RELEASE = """
import sys
from kubernetes import config
from contract.config import load_stack, stack_file
from rollout.engine import ReleaseEngine
from rollout.ports import ReleaseSpec
from tests.pulumi.test_up import release_target

stack, project, version, image, push = sys.argv[1:6]
cfg = load_stack(stack, project)
target = release_target(cfg, config.new_client_from_config(), push)
ReleaseEngine(cfg, target, stackfile=stack_file(stack, project)).start(
    ReleaseSpec("", version, image)
)
"""


@pytest.mark.parametrize("name", STACKS)
def test_a_release_killed_mid_step_leaves_nothing_pulumi_up_fights(stacks, kube, pushgateway, name):
    """The release engine is SIGKILLed with its canary at 25%, settling (long windows, so no
    gate reads a pod). ``pulumi preview`` then sees no change, and a ``pulumi up`` that changes
    the app's resources applies them to both Deployments and leaves the canary's image, version,
    replicas and weight and stable's version as the release left them. The abort afterwards
    rolls the canary back, and ``pulumi preview`` still sees no change."""
    stack = stacks[name]
    cfg = stack.cfg
    version = "9.2.0"
    image = f"{cfg.app.image}:{version}"
    engine_for(
        stack,
        kube,
        pushgateway.url,
        steps=[{"weight": 25, "analysis": "10m"}],
        settle="10m",
        interval="10m",
        leaseTtl="2s",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RELEASE,
            *(name, str(stack.project), version, image),
            pushgateway.url,
        ],
        cwd=REPO,
        env={**os.environ, "KUBECONFIG": stack.env["KUBECONFIG"], "PYTHONPATH": str(REPO)},
    )
    try:

        def at_25() -> str | NotYet:
            seen = live(stack, kube)
            return "yes" if seen["weight"] == "25" else NotYet(str(seen))

        wait_for("the canary at 25%", at_25, timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    in_flight = live(stack, kube)
    assert in_flight["canary"] == (image, version, cfg.app.canary_replicas)
    stack.op("preview", "--expect-no-changes")

    def bigger(config: dict[str, Any]) -> None:
        config["portal:app"]["resources"]["cpuLimit"] = "3"

    stack.edit(bigger)
    up = stack.op("up")
    assert "2 updated" in up.stdout, up.stdout[-3000:]
    apps = client.AppsV1Api(kube)
    for deployment in (cfg.names.stable, cfg.names.canary):
        dep = apps.read_namespaced_deployment(deployment, cfg.namespace)
        assert dep.spec.template.spec.containers[0].resources.limits["cpu"] == "3"
    assert live(stack, kube) == in_flight
    stack.op("preview", "--expect-no-changes")

    time.sleep(2.5)  # the killed engine's lease (2 s) runs out: the abort acts itself
    aborted = engine_for(stack, kube, pushgateway.url).request("abort", "tests")
    assert aborted is not None and aborted.status == OutcomeStatus.ABORTED, aborted
    assert pushed(pushgateway, version) == "2"  # the release event: aborted
    after = live(stack, kube)
    assert (after["canary"][2], after["weight"]) == (0, "0")
    assert after["stable"] == in_flight["stable"]
    stack.op("preview", "--expect-no-changes")


# ------------------------------------------------------------------------------ destroy


@pytest.mark.parametrize("name", STACKS)
def test_destroy_leaves_the_namespace_empty(stacks, kube, name):
    """Everything goes, the objects the release engine made in the namespace (its Jobs, the
    ledger) with it; the volumes are released, not deleted (their reclaim policy)."""
    stack = stacks[name]
    ns = stack.cfg.namespace
    stack.op("destroy")
    assert [r["type"] for r in stack.resources()] in ([], ["pulumi:pulumi:Stack"])
    core = client.CoreV1Api(kube)

    def gone() -> str | NotYet:
        try:
            left = core.read_namespace(ns)
        except ApiException as exc:
            if exc.status == 404:
                return "gone"
            raise
        return NotYet(f"namespace {ns}: {left.status.phase}")

    wait_for(f"namespace {ns} gone", gone)
    pods = core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}").items
    assert pods == []
    volumes = [v for v in core.list_persistent_volume().items if v.spec.claim_ref]
    ours = [v for v in volumes if v.spec.claim_ref.namespace == ns]
    assert ours and all(v.status.phase == "Released" for v in ours), [
        (v.metadata.name, v.status.phase) for v in ours
    ]
