"""A release through real gates on a stack ``pulumi up`` deployed, and ``pulumi`` agreeing with it
afterwards: the README's promise that "``pulumi up`` never fights a release", end to end.

Staging goes up with the real engine (``scripts/stack.py``, in a copy of the project as in
``test_up.py``) into a namespace of its own whose pods the data plane runs as real processes (the
app, Postgres, Redis, the exporters, Prometheus, the Pushgateway); its stack file first gets the
release stacks' fast settings (``tests/cluster/release.py``: 1 s scrapes, short canary windows).
Once up, the stack is seeded and under steady load through the ingress controller, and
``portalctl release start --stack staging`` (the real CLI, the project copy's stack file, a user
holding only the README's Role) releases through the Kubernetes target: the gates read the
stack's own Prometheus scraping the canary and stable pods. Then ``pulumi preview
--expect-no-changes`` and ``pulumi up --expect-no-changes`` must pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from contract.config import load_stack
from tests.cluster.conftest import remove_previous
from tests.cluster.release import (
    STACK,
    ReleaseStack,
    fast_values,
    prometheus,
    serve_release_stack,
)
from tests.pulumi.stacks import Stack, managed, project_stack

pytestmark = pytest.mark.slow
NAMESPACE = "portal-up-release"


@pytest.fixture(scope="module")
def released(
    control_plane: Any,
    kube: client.ApiClient,
    data_plane: Any,
    pulumi_toolchain: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, ReleaseStack]]:
    """Staging up by ``pulumi up`` in ``NAMESPACE``, served by the data plane, seeded and under
    load; destroyed at the end."""
    root = tmp_path_factory.mktemp("pulumi-release")
    stack = project_stack(STACK, root, control_plane, pulumi_toolchain)

    def fast(config: dict[str, Any]) -> None:
        config["portal:namespace"] = NAMESPACE
        config.update({f"portal:{key}": value for key, value in fast_values().items()})

    stack.edit(fast)
    remove_previous(client.CoreV1Api(kube), NAMESPACE, NAMESPACE)
    data_plane.enable(NAMESPACE)
    try:
        stack.op("volumes")
        stack.op("up")
        served = serve_release_stack(kube, control_plane, stack.project, root)
        try:
            yield stack, served
        finally:
            served.stop()
    finally:
        stack.op("destroy", check=False)
        data_plane.disable(NAMESPACE)


def image(version: str) -> str:
    return f"{load_stack(STACK).app.image}:{version}"


def pulumi_agrees(stack: Stack, version: str) -> None:
    """``pulumi preview`` and ``pulumi up`` with ``--expect-no-changes`` pass, ``up`` leaves every
    resource unchanged, and the outputs name the version the release left stable."""
    stack.op("preview", "--expect-no-changes")
    up = stack.op("up", "--expect-no-changes")
    assert f"{managed(stack)} unchanged" in up.stdout, up.stdout[-3000:]
    out = stack.outputs()
    assert (out["appVersion"], out["stableImage"]) == (version, image(version))


def test_a_healthy_release_passes_the_real_gates_and_pulumi_changes_nothing(released):
    """The canary of 2.1.0 takes real traffic through the ingress controller, the metrics gate
    reads it from the stack's Prometheus and passes every step, the release is promoted (exit 0)
    and the stack file says 2.1.0. ``pulumi preview`` and ``pulumi up`` then change nothing, and
    stable still runs 2.1.0 after that ``up``."""
    stack, served = released
    before = stack.cfg.app.version
    done = served.portalctl("release", "start", "--image", image("2.1.0"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "PROMOTED" in done.stdout
    release = next(r for r in served.ledger().releases if r.version == "2.1.0")
    assert str(release.status) == "PROMOTED"
    metrics = [str(v.verdict) for v in release.verdicts if v.gate == "metrics"]
    assert "PASS" in metrics and "FAIL" not in metrics, [
        (v.gate, str(v.verdict), v.reason) for v in release.verdicts
    ]
    canary = 'http_requests_total{track="canary",version="2.1.0"}'
    served_by_canary = prometheus(served.kube, NAMESPACE).value(
        f"sum(max_over_time({canary}[15m]))"
    )
    assert (served_by_canary or 0) > 0, served_by_canary
    assert served.stable_settled("2.1.0") == {"2.1.0"}
    assert served.ingress_weight() == 0
    assert stack.cfg.app.version == "2.1.0" != before

    pulumi_agrees(stack, "2.1.0")
    assert served.versions("stable") == {"2.1.0"}
    assert served.ingress_weight() == 0


def test_a_faulty_release_is_rolled_back_and_pulumi_changes_nothing(released, data_plane):
    """3.1.0 answers 30% errors: the metrics gate fails it on real traffic, the release is rolled
    back (exit 1) with an incident, stable stays where it was, and ``pulumi preview`` and
    ``pulumi up`` still change nothing."""
    stack, served = released
    stable = stack.cfg.app.version
    data_plane.images.portal(image("3.1.0"), env={"PORTAL_FAULT_ERROR_RATE": "0.3"})
    done = served.portalctl("release", "start", "--image", image("3.1.0"))
    assert done.returncode == 1, done.stderr + done.stdout
    release = next(r for r in served.ledger().releases if r.version == "3.1.0")
    assert str(release.status) == "ABORTED"
    incident = release.incident
    assert incident is not None and (incident.gate, incident.check) == ("metrics", "error_rate")
    assert served.ingress_weight() == 0
    names = stack.cfg.names
    canary = served.apps.read_namespaced_deployment(names.canary, NAMESPACE)
    assert canary.spec.replicas == 0
    assert stack.cfg.app.version == stable
    assert served.versions("stable") == {stable}

    pulumi_agrees(stack, stable)
    assert served.versions("stable") == {stable}
