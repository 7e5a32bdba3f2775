"""Runbooks on the real control plane: ``portalctl runbook run NAME --stack`` reads pods, events
and Job status from the API server and rolls a canary back there, holding only the README's Role.

The stack is the release stack of ``tests/cluster/release.py`` (real processes behind its pods);
the faults are made the way they happen: a version whose migration fails, a canary that came back
after its release was rolled back.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from kubernetes import client, config

from contract.labels import CANARY_WEIGHT_ANNOTATION
from rollout.k8s import kubernetes_target
from rollout.ledger import LedgerDoc
from rollout.ports import ReleaseSpec
from tests.cluster.conftest import NotYet, condition, wait_for

pytestmark = pytest.mark.slow
REPOSITORY = "ghcr.io/acme/portal"


def runbook(stack, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``portalctl runbook run NAME --stack staging ...`` as the on-call types it, with no
    terminal (so without ``--yes`` every action is declined)."""
    done: subprocess.CompletedProcess[str] = stack.portalctl("runbook", "run", name, *args)
    return done


def test_a_runbook_reads_the_failed_job_its_events_and_the_pods_from_the_api_server(
    release_stack, data_plane, tmp_path
):
    """After a release stopped by its failing migration, ``migration-failed`` finds the Job
    failed (a critical finding: exit 1) and the Warning events the Job controller wrote; the
    ``instances-not-ready`` runbook lists every app pod with its track, version and readiness
    as the API server reports them."""
    stack = release_stack
    stack.set_canary()
    version = "11.0.0"
    broken = "-- expand\nALTER TABLE users ADD CONSTRAINT never_holds CHECK (false);\n"
    data_plane.images.portal(
        f"{REPOSITORY}:{version}", migrations={"0004_never_holds.sql": broken}, workdir=tmp_path
    )
    started = stack.portalctl("release", "start", "--image", f"{REPOSITORY}:{version}")
    assert started.returncode == 1, started.stderr + started.stdout
    job_name = stack.config().names.migration_job(version, "expand")
    job = client.BatchV1Api(stack.kube).read_namespaced_job(job_name, stack.namespace)
    assert condition(job, "Failed") == "True"

    done = runbook(stack, "migration-failed")
    out = done.stdout
    assert done.returncode == 1, done.stderr + out
    assert "Traceback" not in done.stderr + out
    assert re.search(rf"Job {re.escape(job_name)}: .*fail", out, re.I | re.S), out
    assert "BackoffLimitExceeded" in out or "Warning" in out or "events" in out.lower(), out

    pods = runbook(stack, "instances-not-ready")
    assert "Traceback" not in pods.stderr + pods.stdout
    live = client.CoreV1Api(stack.kube).list_namespaced_pod(
        stack.namespace, label_selector="app.kubernetes.io/component=api"
    )
    running = [p for p in live.items if p.status.phase == "Running"]
    assert running
    for pod in running:
        assert str(pod.metadata.name) in pods.stdout, (pod.metadata.name, pods.stdout)
    assert "phase Running, ready True" in pods.stdout, pods.stdout


def test_the_rollback_action_removes_a_canary_that_came_back(release_stack):
    """A canary running again after its release ended (a manual deploy, a crashed rollback):
    declined without ``--yes``, it stays; with ``--yes`` the runbook's rollback scales it to
    zero and takes its weight off the Ingress, and the ledger records who did it."""
    stack = release_stack
    cfg = stack.config()
    api = config.new_client_from_config(config_file=str(stack.kubeconfig))
    target = kubernetes_target(cfg, api, poll_s=0.2, timeout_s=180)
    version = "12.0.0"
    target.workloads.deploy_canary(
        ReleaseSpec("", version, f"{REPOSITORY}:{version}"), cfg.app.canary_replicas
    )
    target.router.set_weight(20)
    recorded_before = actions_by(stack, "release-aborted")

    declined = runbook(stack, "release-aborted")
    assert "Traceback" not in declined.stderr + declined.stdout
    assert stack.ingress_weight() == 20

    done = runbook(stack, "release-aborted", "--yes")
    out = done.stdout
    assert "Traceback" not in done.stderr + out
    assert f"canary {version} removed, weight 20% -> 0%" in out, out
    names = cfg.names
    canary = stack.apps.read_namespaced_deployment(names.canary, stack.namespace)
    assert canary.spec.replicas == 0
    ingress = client.NetworkingV1Api(stack.kube).read_namespaced_ingress(
        names.canary_ingress, stack.namespace
    )
    assert ingress.metadata.annotations[CANARY_WEIGHT_ANNOTATION] == "0"

    def canary_pods_gone() -> bool | NotYet:
        pods = stack.core.list_namespaced_pod(
            stack.namespace, label_selector="portal.dev/track=canary"
        ).items
        alive = [p.metadata.name for p in pods if not p.metadata.deletion_timestamp]
        return True if not alive else NotYet(f"canary pods left: {alive}")

    wait_for("the canary's pods to go", canary_pods_gone, timeout=120)
    assert "recorded in" in out, out
    assert actions_by(stack, "release-aborted") == recorded_before + 1


def actions_by(stack, runbook_slug: str) -> int:
    """How many actions the ledger records as taken by ``runbook_slug``'s runs."""
    doc: LedgerDoc = stack.ledger()
    return doc.model_dump_json().count(f'"by":"runbook {runbook_slug}:')
