"""Releases through the Kubernetes target while the cluster misbehaves, on the real control plane
with the data plane of real processes (``release_stack``, ``tests/cluster/release.py``):

- the API server stopped for 60 s in the middle of a step's analysis (the process ended:
  connections refused), then started again: longer than the node controller's grace period, so
  the node and every pod on it are marked not ready until the node reports again (a kubelet's
  part the data plane plays). The release keeps its weight, retries within
  ``onProviderError``, writes the rounds it could not write once the ledger is back, and
  finishes, with no step repeated or skipped and no takeover;
- ``portalctl``'s token revoked in the middle of a step (a ServiceAccount token bound to a
  Secret that is deleted), then rotated in its kubeconfig's ``tokenFile``: the same run goes on
  with the new token and finishes;
- ``portalctl`` SIGKILLed at each transition of a promotion and of a release's rollback (right
  after the ledger's intent, inside the target's action, right after the ledger's done):
  ``status`` tells what the ledger holds and what the cluster runs, and ``resume`` finishes the
  job exactly once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from rollout.ledger import Action, LedgerDoc, Release, TransitionState
from tests.cluster.conftest import NotYet, wait_for
from tests.cluster.release import ACCOUNT, STACK, ReleaseStack, Running
from tests.conftest import REPO, cluster_script

pytestmark = pytest.mark.slow
REPOSITORY = "ghcr.io/acme/portal"
STOPPED_S = 60.0
KILLED = -signal.SIGKILL
PAUSING = [{"weight": 30, "analysis": "3s"}, {"pause": True}, {"weight": 100, "analysis": "3s"}]
versions = count(1)
STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def nothing_left_in_flight(release_stack: ReleaseStack) -> Iterator[None]:
    """A test that fails midway leaves no portalctl running and no release in flight for the
    next one."""
    yield
    kill_started()
    try:
        if ledger_of(release_stack).active() is not None:
            lease_free(release_stack)
            run(release_stack, "release", "abort")
    finally:
        kill_started()  # an abort that timed out holds the lease no longer


def kill_started() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def image(version: str) -> str:
    return f"{REPOSITORY}:{version}"


def release_of(stack: ReleaseStack, version: str) -> Release:
    return next(r for r in reversed(stack.ledger().releases) if r.version == version)


def ctl(stack: ReleaseStack, *args: str, crash: str | None = None, **env: str) -> Running:
    """``portalctl`` as a user runs it (the README's Role), or the build that dies at ``crash``
    (``tests/crashing_portalctl.py``)."""
    head = ["-m", "tests.crashing_portalctl", crash] if crash else ["-m", "rollout.cli"]
    argv = [sys.executable, *head, *args, "--stack", STACK, "--project-dir", str(stack.project)]
    full_env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig), "COLUMNS": "200", **env}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=REPO
    )
    STARTED.append(proc)
    return Running(proc, argv)


def run(stack: ReleaseStack, *args: str, crash: str | None = None) -> Any:
    return ctl(stack, *args, crash=crash).communicate_result(300)


def status(stack: ReleaseStack) -> dict[str, Any]:
    done = run(stack, "release", "status", "--json")
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def ledger_of(stack: ReleaseStack) -> LedgerDoc:
    """The stack's ledger (empty before its first release)."""
    try:
        return stack.ledger()
    except ApiException as exc:
        if exc.status != 404:
            raise
        return LedgerDoc()


def stable_version(stack: ReleaseStack) -> str:
    """The ledger's stable version (before any release: the stack file's)."""
    stable = ledger_of(stack).stable
    return stable.version if stable is not None else stack.config().app.version


def lease_free(stack: ReleaseStack) -> None:
    """Until no live holder is left (a holder killed before holds it for its TTL)."""

    def free() -> bool | NotYet:
        lease = ledger_of(stack).lease
        if lease is None or lease.expires_at < time.time():
            return True
        return NotYet(f"held by {lease.holder} for {lease.expires_at - time.time():.0f}s more")

    wait_for("the lease free", free, timeout=60, every=0.2)


def analysing(stack: ReleaseStack, version: str, rounds: int = 2) -> Release | NotYet:
    """The release on its first step with ``rounds`` check rounds in the ledger."""
    doc = ledger_of(stack)
    latest = doc.releases[-1] if doc.releases else None
    if latest is None or latest.version != version:
        return NotYet("not started")
    on_step = [s for s in latest.samples if s.step == 0]
    if str(latest.status) != "PROGRESSING" or len(on_step) < rounds:
        return NotYet(f"{latest.status}, {len(on_step)} round(s) on step 0")
    return latest


def weights(release: Release) -> list[int | None]:
    return [t.args.weight for t in release.transitions if t.action is Action.SET_WEIGHT]


@contextlib.contextmanager
def api_server_stopped(control_plane: Any) -> Iterator[None]:
    """kube-apiserver stopped (SIGTERM: it exits, connections are refused), then started again
    with the same command line once the block ends, and ready. The cluster's record (its
    ``cluster.json`` and the fixture's) follows the new process, so ``down`` stops it."""
    script = cluster_script()
    state = Path(control_plane.dir)
    component = next(c for c in control_plane.components if c.name == "kube-apiserver")
    raw = Path(f"/proc/{component.pid}/cmdline").read_bytes().rstrip(b"\0")
    argv = [a.decode() for a in raw.split(b"\0")]
    script._stop_pid(component.pid, state)
    try:
        yield
    finally:
        started = script._start(state, "kube-apiserver", argv)
        component.pid = started.pid
        saved = script.Cluster.load(state)
        for c in saved.components:
            if c.name == "kube-apiserver":
                c.pid = started.pid
        saved.save()
        wait_for("the API server ready again", saved.ready, timeout=180)


def assert_finished_in_one_run(stack: ReleaseStack, version: str, done: Any) -> Release:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PROMOTED" in done.stdout, done.stdout
    release = release_of(stack, version)
    assert str(release.status) == "PROMOTED"
    assert weights(release) == [30, 100]  # no step repeated, none skipped
    assert all(t.state is TransitionState.DONE for t in release.transitions)
    assert not [t for t in stack.ledger().takeovers if t.release_id == release.id]
    assert stack.ledger().stable.version == version
    assert stack.stable_settled(version) == {version}
    return release


# ------------------------------------------------------------------ the API server stopped


def test_the_api_server_stopped_for_60s_mid_analysis_the_release_retries_and_finishes(
    release_stack, control_plane
):
    stack = release_stack
    stack.set_canary(
        steps=[{"weight": 30, "analysis": "20s"}, {"weight": 100, "analysis": "3s"}],
        leaseTtl="6s",
        onProviderError={"limit": "180s", "then": "abort"},
    )
    lease_free(stack)
    version = f"30.{next(versions)}.0"
    running = ctl(stack, "release", "start", "--image", image(version))
    wait_for(f"{version} analysing", lambda: analysing(stack, version), timeout=240, every=0.2)
    stopped_at = time.time()
    with api_server_stopped(control_plane):
        time.sleep(STOPPED_S)  # the fault itself: no API server for a minute
        restarting_at = time.time()  # the release may move on as soon as the server answers
    done = running.communicate_result(300)
    release = assert_finished_in_one_run(stack, version, done)
    said = " ".join(done.stdout.split())
    assert "did not answer" in said, said  # the operator saw the API server not answering
    # the release stayed on its weight while the cluster could not be reached, and the rounds
    # of that time reached the ledger once it was back
    during = [s for s in release.samples if stopped_at <= s.at <= restarting_at]
    assert during and {s.weight for s in during} == {30}, during
    assert any("PROVIDER_ERROR" in s.verdicts.values() for s in during), during
    assert "FAIL" not in {str(v.verdict) for v in release.verdicts}


# ------------------------------------------------------------------ credentials


def bound_token(stack: ReleaseStack, secret: str) -> str:
    """A token of ``portalctl``'s ServiceAccount bound to Secret ``secret``: refused as soon as
    that Secret is deleted (a revoked credential)."""
    created = stack.core.create_namespaced_secret(stack.namespace, {"metadata": {"name": secret}})
    request = {
        "spec": {
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "kind": "Secret",
                "apiVersion": "v1",
                "name": secret,
                "uid": created.metadata.uid,
            },
        }
    }
    token = stack.core.create_namespaced_service_account_token(ACCOUNT, stack.namespace, request)
    return str(token.status.token)


def token_file_kubeconfig(stack: ReleaseStack, control_plane: Any, token_file: Path) -> Path:
    """A kubeconfig for ``portalctl`` whose user reads its token from ``token_file``."""
    out = token_file.with_name("token-file.kubeconfig")
    ca = base64.b64encode(Path(control_plane.ca).read_bytes()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "portal",
                "cluster": {"server": control_plane.server, "certificate-authority-data": ca},
            }
        ],
        "users": [{"name": ACCOUNT, "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": ACCOUNT, "context": {"cluster": "portal", "user": ACCOUNT}}],
        "current-context": ACCOUNT,
    }
    out.write_text(json.dumps(doc))
    out.chmod(0o600)
    return out


def accepted(stack: ReleaseStack, control_plane: Any, token: str) -> bool:
    """Whether the API server accepts ``token`` (reading the ledger, as ``portalctl`` would)."""
    conf = client.Configuration(host=control_plane.server)
    conf.ssl_ca_cert = control_plane.ca
    conf.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(conf) as api:
        try:
            client.CoreV1Api(api).read_namespaced_config_map(
                stack.config().names.ledger, stack.namespace
            )
        except ApiException as exc:
            if exc.status == 401:
                return False
            raise
    return True


def test_a_token_revoked_mid_release_holds_the_weight_and_the_rotated_one_finishes_it(
    release_stack, control_plane, tmp_path
):
    stack = release_stack
    stack.set_canary(
        steps=[{"weight": 30, "analysis": "20s"}, {"weight": 100, "analysis": "3s"}],
        leaseTtl="4s",
        onProviderError={"limit": "180s", "then": "abort"},
    )
    lease_free(stack)
    first_secret = f"portalctl-token-{next(versions)}"
    first = bound_token(stack, first_secret)
    wait_for("the first token accepted", lambda: accepted(stack, control_plane, first))
    token_file = tmp_path / "token"
    token_file.write_text(first)
    kubeconfig = token_file_kubeconfig(stack, control_plane, token_file)
    version = f"31.{next(versions)}.0"
    running = ctl(stack, "release", "start", "--image", image(version), KUBECONFIG=str(kubeconfig))
    wait_for(f"{version} analysing", lambda: analysing(stack, version), timeout=240, every=0.2)

    revoked_at = time.time()
    stack.core.delete_namespaced_secret(first_secret, stack.namespace)  # the token is revoked
    wait_for("the token refused", lambda: not accepted(stack, control_plane, first))

    def lease_lapsed() -> bool | NotYet:
        lease = stack.ledger().lease
        if lease is not None and lease.expires_at < time.time():
            return True
        return NotYet(f"lease {lease}")

    # portalctl cannot renew its lease with a refused token: it lapses in the ledger
    wait_for("portalctl's lease lapsed", lease_lapsed, timeout=60, every=0.2)
    assert running.proc.poll() is None  # and the run goes on: the refusal is retried
    second = bound_token(stack, f"portalctl-token-{next(versions)}")
    wait_for("the rotated token accepted", lambda: accepted(stack, control_plane, second))
    token_file.write_text(second)  # the operator's tooling rotates the file
    rotated_at = time.time()
    done = running.communicate_result(300)
    release = assert_finished_in_one_run(stack, version, done)
    said = " ".join(done.stdout.split())
    assert "HTTP 401" in said, said
    during = [s for s in release.samples if revoked_at <= s.at <= rotated_at]
    assert during and {s.weight for s in during} == {30}, during
    assert any("PROVIDER_ERROR" in s.verdicts.values() for s in during), during


# ------------------------------------------------------------------ killed at each transition


def paused_release(stack: ReleaseStack) -> str:
    stack.set_canary(steps=PAUSING, leaseTtl="3s")
    lease_free(stack)
    version = f"32.{next(versions)}.0"
    started = run(stack, "release", "start", "--image", image(version))
    assert started.returncode == 3, started.stdout + started.stderr  # paused for approval
    return version


def assert_resumed(stack: ReleaseStack, release: Release) -> None:
    takeover = stack.ledger().takeovers[-1]
    assert takeover.release_id == release.id and takeover.action == "resume"
    assert takeover.previous != takeover.holder


@pytest.mark.parametrize("point", ["promote:intent", "k8s-promote:stable", "promote:done"])
def test_killed_at_each_transition_of_a_promotion_resume_finishes_it(release_stack, point):
    stack = release_stack
    before = stable_version(stack)
    version = paused_release(stack)
    killed = run(stack, "release", "promote", crash=point)
    assert killed.returncode == KILLED, killed.stdout + killed.stderr

    seen = status(stack)
    runs = seen["running"]["stable_version"]
    if point == "promote:done":
        assert seen["stable"]["version"] == version and seen["active"] is None
        assert seen["pending"] is None and runs == version
        assert stack.stable_settled(version) == {version}
        return
    assert seen["stable"]["version"] == before  # the ledger moves once the promotion is done
    assert seen["pending"]["action"] == "promote"
    assert "release resume" in seen["pending"]["detail"]
    assert runs == (version if point == "k8s-promote:stable" else before)

    lease_free(stack)
    resumed = run(stack, "release", "resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    release = release_of(stack, version)
    assert str(release.status) == "PROMOTED"
    assert [t.action for t in release.transitions].count(Action.PROMOTE) == 1
    assert all(t.state is TransitionState.DONE for t in release.transitions)
    assert stack.ledger().stable.version == version
    assert stack.stable_settled(version) == {version}
    assert stack.ingress_weight() == 0
    assert_resumed(stack, release)
    assert status(stack)["pending"] is None


@pytest.mark.parametrize("point", ["rollback:intent", "k8s-rollback:weight0", "rollback:done"])
def test_killed_at_each_transition_of_a_rollback_resume_finishes_it(release_stack, point):
    stack = release_stack
    version = paused_release(stack)
    before = stable_version(stack)
    killed = run(stack, "release", "abort", crash=point)
    assert killed.returncode == KILLED, killed.stdout + killed.stderr

    seen = status(stack)
    assert seen["stable"]["version"] == before and seen["running"]["stable_version"] == before
    names = stack.config().names
    if point == "rollback:done":
        assert seen["active"] is None and seen["pending"] is None
    else:
        assert seen["pending"]["action"] == "rollback"
        assert "release resume" in seen["pending"]["detail"]
        assert stack.ingress_weight() == (0 if point == "k8s-rollback:weight0" else 30)
        lease_free(stack)
        resumed = run(stack, "release", "resume")
        assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # rolled back
        assert_resumed(stack, release_of(stack, version))
    release = release_of(stack, version)
    assert str(release.status) == "ABORTED"
    assert [t.action for t in release.transitions].count(Action.ROLLBACK) == 1
    assert all(t.state is TransitionState.DONE for t in release.transitions)
    assert stack.ingress_weight() == 0
    canary = stack.apps.read_namespaced_deployment(names.canary, stack.namespace)
    assert canary.spec.replicas == 0
    assert stack.ledger().stable.version == before
    assert stack.versions("stable") == {before}
    assert status(stack)["pending"] is None
