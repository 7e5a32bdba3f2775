"""Releases through the Kubernetes target against the real API server: the scenarios the local
target passes (``tests/rollout/test_local_release.py``), driven by ``portalctl --stack`` holding
only the README's Role.

The stack (``release_stack``) is staging in a namespace of its own: real app processes behind the
stable and canary pods, Postgres, Redis, Prometheus discovering the pods through the API, the
Pushgateway, load through an nginx ingress that follows the canary Ingress's weight. A faulty
release is a faulty image (``data_plane.images.portal``), as it would be in a registry.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import pytest
from kubernetes import client, config

from contract.config import load_stack
from rollout.alerting import AlertmanagerClient
from rollout.k8s import kubernetes_target
from rollout.k8s.api import http_auth, service_proxy
from rollout.k8s.ledger_store import ConfigMapLedgerStore
from rollout.ledger import Incident, Lease, Ledger, LedgerDoc
from rollout.ports import ConflictError
from tests.cluster.conftest import NotYet, condition, wait_for
from tests.cluster.release import STACK, bind

pytestmark = pytest.mark.slow
REPOSITORY = "ghcr.io/acme/portal"


def image(version: str) -> str:
    return f"{REPOSITORY}:{version}"


def release_of(stack, version: str) -> Any:
    return next(r for r in reversed(stack.ledger().releases) if r.version == version)


def assert_canary_empty(stack) -> None:
    names = stack.config().names
    assert stack.ingress_weight() == 0
    canary = stack.apps.read_namespaced_deployment(names.canary, stack.namespace)
    assert canary.spec.replicas == 0


def pushed(stack) -> str:
    names = stack.config().names
    return str(
        stack.core.connect_get_namespaced_service_proxy_with_path(
            f"{names.pushgateway}:{names.pushgateway_port}",
            stack.namespace,
            "metrics",
            _preload_content=False,
        ).data.decode()
    )


def test_a_healthy_release_is_promoted_and_stable_runs_it(release_stack):
    stack = release_stack
    stack.set_canary()
    done = stack.portalctl("release", "start", "--image", image("2.0.0"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "PROMOTED" in done.stdout
    release = release_of(stack, "2.0.0")
    assert [(str(t.action), t.args.weight) for t in release.transitions] == [
        ("migrate_expand", None),
        ("deploy_canary", None),
        ("set_weight", 30),
        ("set_weight", 100),
        ("promote", None),
    ]
    verdicts = {str(v.verdict) for v in release.verdicts}
    assert "PASS" in verdicts and "FAIL" not in verdicts
    names = stack.config().names
    stable = stack.apps.read_namespaced_deployment(names.stable, stack.namespace)
    assert stable.spec.template.spec.containers[0].image == image("2.0.0")
    assert stack.stable_settled("2.0.0") == {"2.0.0"}
    assert_canary_empty(stack)
    assert stack.ledger().stable.version == "2.0.0"
    # the release's migration Job ran the real runner; its log came back through the API
    job = client.BatchV1Api(stack.kube).read_namespaced_job(
        names.migration_job("2.0.0", "expand"), stack.namespace
    )
    assert condition(job, "Complete") == "True"
    # the next `pulumi up` agrees with what runs
    assert load_stack(STACK, stack.project).app.version == "2.0.0"


def alertmanager(stack) -> AlertmanagerClient:
    """The stack's Alertmanager through the API server's service proxy (the admin's token)."""
    names = stack.config().names
    url = service_proxy(stack.kube, stack.namespace, names.alertmanager, names.alertmanager_port)
    return AlertmanagerClient(url, auth=http_auth(stack.kube))


def test_a_release_posts_its_events_and_silences_its_noise_through_the_proxy(release_stack):
    """``portalctl`` holding only the README's Role reaches the stack's Alertmanager (Debian's,
    running the pod the program renders) through the API server's service proxy: the release's
    events arrive, and the silence it set is expired once the release is promoted."""
    stack = release_stack
    stack.set_canary()
    done = stack.portalctl(
        "release", "start", "--image", image("2.1.0"), "--silence", "PortalHighLatency"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "not sent" not in done.stdout and "not set" not in done.stdout, done.stdout
    release = release_of(stack, "2.1.0")
    silence = release.silence
    assert silence is not None and silence.id and silence.ended_at is not None, silence
    assert f"silence {silence.id}" in done.stdout
    am = alertmanager(stack)
    assert am.silence_state(silence.id) == "expired"
    events = {
        (a["labels"]["event"], a["labels"].get("step"))
        for a in am.alerts()
        if a["labels"].get("release") == release.id
    }
    assert events == {("started", None), ("step_passed", "1"), ("step_passed", "2"),
                      ("promoted", None)}  # fmt: skip


def test_an_erroring_canary_is_rolled_back_with_an_incident_and_a_push(release_stack, data_plane):
    stack = release_stack
    stack.set_canary()
    data_plane.images.portal(image("3.0.0"), env={"PORTAL_FAULT_ERROR_RATE": "0.3"})
    before = stack.versions("stable")
    done = stack.portalctl("release", "start", "--image", image("3.0.0"))
    assert done.returncode == 1, done.stderr + done.stdout
    release = release_of(stack, "3.0.0")
    assert str(release.status) == "ABORTED"
    incident = release.incident
    assert incident is not None and incident.gate == "metrics", incident
    assert incident.check == "error_rate" and incident.runbook == "release-aborted", incident
    assert 'version="3.0.0"' in incident.query
    assert [str(t.action) for t in release.transitions][-1] == "rollback"
    assert_canary_empty(stack)
    assert stack.versions("stable") == before
    text = pushed(stack)
    assert "portal_release_aborted_timestamp_seconds{" in text
    assert f'release="{release.id}"' in text


def test_a_slow_canary_is_rolled_back_by_the_latency_gate(release_stack, data_plane):
    stack = release_stack
    # enough stable requests for its p95 to be sure below a bucket bound (see the local test)
    stack.set_canary(steps=[{"weight": 30, "analysis": "12s"}, {"weight": 100, "analysis": "3s"}])
    data_plane.images.portal(image("4.0.0"), env={"PORTAL_FAULT_LATENCY_MS": "300"})
    done = stack.portalctl("release", "start", "--image", image("4.0.0"))
    assert done.returncode == 1, done.stderr + done.stdout
    release = release_of(stack, "4.0.0")
    incident = release.incident
    assert incident is not None and incident.check == "p95_latency", incident
    assert_canary_empty(stack)


def test_a_failed_migration_job_stops_the_release_before_any_canary(
    release_stack, data_plane, tmp_path
):
    stack = release_stack
    stack.set_canary()
    names = stack.config().names
    canary_before = stack.apps.read_namespaced_deployment(names.canary, stack.namespace)
    broken = "-- expand\nALTER TABLE users ADD CONSTRAINT always_fails CHECK (false);\n"
    data_plane.images.portal(
        image("5.0.0"), migrations={"0004_always_fails.sql": broken}, workdir=tmp_path
    )
    done = stack.portalctl("release", "start", "--image", image("5.0.0"))
    assert done.returncode == 1, done.stderr + done.stdout
    job_name = names.migration_job("5.0.0", "expand")
    assert job_name in done.stdout and "failed" in done.stdout
    job = client.BatchV1Api(stack.kube).read_namespaced_job(job_name, stack.namespace)
    assert condition(job, "Failed") == "True"
    # the runner's own words reach the operator through the pod's log
    (pod,) = stack.core.list_namespaced_pod(
        stack.namespace, label_selector=f"job-name={job_name}"
    ).items
    log = stack.core.read_namespaced_pod_log(pod.metadata.name, stack.namespace)
    assert "0004_always_fails" in log
    release = release_of(stack, "5.0.0")
    assert "deploy_canary" not in [str(t.action) for t in release.transitions]
    canary = stack.apps.read_namespaced_deployment(names.canary, stack.namespace)
    assert canary.spec.template.spec.containers[0].image == (
        canary_before.spec.template.spec.containers[0].image
    )
    assert_canary_empty(stack)


def test_portalctl_killed_mid_analysis_resumes_from_the_step_it_was_on(release_stack):
    stack = release_stack
    stack.set_canary(steps=[{"weight": w, "analysis": "3s"} for w in (20, 50, 100)], leaseTtl="3s")
    running = stack.start("release", "start", "--image", image("6.0.0"))

    def on_a_later_step() -> Any:
        latest = stack.ledger().releases[-1] if stack.ledger().releases else None
        if latest and latest.version == "6.0.0" and latest.step >= 1:
            return latest
        return NotYet(f"latest {latest and (latest.version, latest.step)}")

    wait_for("release 6.0.0 on its second step", on_a_later_step, timeout=180, every=0.1)
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait()
    killed = stack.ledger()
    assert str(killed.releases[-1].status) == "PROGRESSING"

    def lease_expired() -> bool:
        lease = stack.ledger().lease
        return lease is None or lease.expires_at < time.time()

    wait_for("the killed holder's lease expired", lease_expired, timeout=30)
    done = stack.portalctl("release", "resume")
    assert done.returncode == 0, done.stderr + done.stdout
    release = release_of(stack, "6.0.0")
    weights = [t.args.weight for t in release.transitions if str(t.action) == "set_weight"]
    assert weights.count(20) == 1, weights  # a finished step is never repeated
    assert weights[-1] == 100 and 50 in weights  # and none is skipped
    assert str(release.status) == "PROMOTED"
    assert stack.stable_settled("6.0.0") == {"6.0.0"}


def test_two_starts_at_once_one_is_refused_naming_the_holder(release_stack):
    stack = release_stack
    stack.set_canary(steps=[{"weight": 50, "analysis": "3s"}])
    a = stack.start("release", "start", "--image", image("7.0.0"))
    b = stack.start("release", "start", "--image", image("7.0.1"))
    results = [r.communicate_result(300) for r in (a, b)]
    assert sorted(r.returncode for r in results) == [0, 2], results
    refused = next(r for r in results if r.returncode == 2)
    assert "held by" in refused.stderr or "in flight" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


class CountingStore:
    """The ConfigMap store, counting the compare-and-swap writes the API server refused."""

    def __init__(self, store: ConfigMapLedgerStore) -> None:
        self.store = store
        self.conflicts = 0
        self.lock = threading.Lock()

    def load(self) -> Any:
        return self.store.load()

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        try:
            return self.store.save(doc, token)
        except ConflictError:
            with self.lock:
                self.conflicts += 1
            raise

    def archive(self, key: str, doc: dict[str, Any]) -> None:
        self.store.archive(key, doc)

    def archived(self, key: str) -> dict[str, Any] | None:
        return self.store.archived(key)

    def prune(self, keep: set[str]) -> None:
        self.store.prune(keep)


def test_the_configmap_ledger_keeps_every_write_of_concurrent_writers(release_stack):
    """Writers racing on the ledger ConfigMap: the API server refuses stale resourceVersions
    (409), each writer re-reads and retries, and no write is lost or doubled."""
    stack = release_stack
    api = config.new_client_from_config(config_file=str(stack.kubeconfig))
    store = CountingStore(ConfigMapLedgerStore(stack.config(), api))
    ledger = Ledger(store, STACK, f"kubernetes:{stack.namespace}")
    ledger.update(lambda d: d.incidents.clear())  # the ledger keeps the newest 50
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for n in range(10):
                incident = Incident(id=f"race-{writer}-{n}", opened_at=0.0, reason="race")
                ledger.update(lambda d, inc=incident: d.incidents.append(inc))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    ids = [i.id for i in stack.ledger().incidents if i.id.startswith("race-")]
    assert sorted(ids) == sorted(f"race-{w}-{n}" for w in range(5) for n in range(10))
    assert len(stack.ledger().incidents) == 50
    assert store.conflicts > 0, "no write lost a race: the test did not test concurrency"

    # the lease: of writers racing to take it, exactly one wins
    won: list[str] = []

    def take(holder: str) -> None:
        def grab(doc: LedgerDoc) -> bool:
            if doc.lease_live(time.time()):
                return False
            doc.lease = Lease(holder=holder, expires_at=time.time() + 30)
            return True

        if ledger.update(grab):
            won.append(holder)

    racers = [threading.Thread(target=take, args=(f"racer-{i}",)) for i in range(6)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(60)
    assert len(won) == 1, won
    assert stack.ledger().lease.holder == won[0]
    ledger.update(lambda d: setattr(d, "lease", None))


def test_scripted_rollback_is_refused_after_a_contract_migration(release_stack):
    stack = release_stack
    stack.set_canary()
    for version in ("8.0.0", "8.1.0"):
        done = stack.portalctl("release", "start", "--image", image(version))
        assert done.returncode == 0, done.stderr + done.stdout
    back = stack.portalctl("rollback")
    assert back.returncode == 0, back.stderr + back.stdout
    assert stack.stable_settled("8.0.0") == {"8.0.0"}
    forward = stack.portalctl("release", "start", "--image", image("8.2.0"))
    assert forward.returncode == 0, forward.stderr + forward.stdout
    contract = stack.portalctl("release", "contract")
    assert contract.returncode == 0, contract.stderr + contract.stdout
    assert "0003_drop_users_username" in contract.stdout
    refused = stack.portalctl("rollback", "--to", "8.0.0")
    assert refused.returncode == 2, refused.stderr + refused.stdout
    assert "0003_drop_users_username" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert stack.stable_settled("8.2.0") == {"8.2.0"}  # refused: nothing changed
    forced = stack.portalctl("rollback", "--to", "8.0.0", "--force")
    assert forced.returncode == 0, forced.stderr + forced.stdout
    assert stack.stable_settled("8.0.0") == {"8.0.0"}
    names = stack.config().names
    job = client.BatchV1Api(stack.kube).read_namespaced_job(
        names.migration_job("8.2.0", "contract"), stack.namespace
    )
    assert condition(job, "Complete") == "True"


def test_stable_has_rolled_out_when_set_stable_returns(release_stack):
    """The Deployment controller replaces stable's pods one at a time (maxUnavailable 0): the
    wait ends when no pod of the old version is left, not when as many pods as wanted are
    ready, which the old ones are while the last new one starts."""
    stack = release_stack
    api = config.new_client_from_config(config_file=str(stack.kubeconfig))
    target = kubernetes_target(stack.config(), api, poll_s=0.2, timeout_s=180)
    for version in ("9.0.0", "9.0.1"):
        target.workloads.set_stable(version, image(version))
        assert stack.versions("stable") == {version}


@pytest.mark.parametrize(
    ("group", "resource", "verb", "command", "code"),
    [
        ("", "configmaps", "get", ("release", "status"), 2),
        (
            "networking.k8s.io",
            "ingresses",
            "patch",
            ("release", "start", "--image", image("10.0.0")),
            3,
        ),
    ],
)
def test_a_verb_missing_from_the_role_is_refused_in_one_line(
    release_stack, kube, control_plane, group, resource, verb, command, code
):
    """Each verb of the README's Role is needed: without it the API server refuses, and
    ``portalctl`` says so in one line naming the verb and the resource (no traceback). A refusal
    mid-release holds the release (exit 3: here the rollback the failed weight change started),
    the outcome line naming the refusal; once the verb is back, resume finishes it."""
    stack = release_stack
    stack.set_canary()
    role = json.loads(json.dumps(stack.role))
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    bind(kube, control_plane, role, stack.kubeconfig)
    try:
        done = stack.portalctl(*command)
    finally:
        bind(kube, control_plane, stack.role, stack.kubeconfig)
    assert done.returncode == code, done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    if code == 2:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f'cannot {verb} resource "{resource}"' in lines[0], lines[0]
    if code == 3:
        said = " ".join(done.stdout.split())
        held = said[said.rindex("HELD ") :]  # the outcome line
        assert f'cannot {verb} resource "{resource}"' in held, held
        assert "release resume" in said, said
        resumed = stack.portalctl("release", "resume")
        assert resumed.returncode == 1, resumed.stderr + resumed.stdout
        assert "ROLLED BACK" in resumed.stdout
        assert stack.ledger().active() is None
        assert_canary_empty(stack)
