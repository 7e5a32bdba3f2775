"""The Kubernetes target against a stand-in API server that validates every write."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from rollout.k8s import kubernetes_target
from rollout.ledger import Incident, Ledger
from rollout.ports import ConflictError, ReleaseSpec, TargetError

from .conftest import api_client, config

NS = "portal-staging"
IMAGE = "ghcr.io/acme/portal:2.0.0"


def spec(version="2.0.0", image=IMAGE):
    return ReleaseSpec("r1", version, image)


def container(standin, name):
    dep = standin.get("Deployment", NS, name)
    return dep["spec"]["template"]["spec"]["containers"][0], dep


def test_state_reads_what_pulumi_created(target):
    state = target.workloads.state()
    assert state.stable_version == "1.0.0"
    assert state.stable_image == "ghcr.io/acme/portal:1.0.0"
    assert state.weight == 0 and state.canary_replicas == 0


def test_deploy_canary_patches_image_version_and_replicas_and_waits_for_the_rollout(
    target, standin
):
    target.workloads.deploy_canary(spec(), 2)
    c, dep = container(standin, "portal-canary")
    assert c["image"] == IMAGE
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0.0"
    assert dep["spec"]["replicas"] == 2
    assert dep["status"]["readyReplicas"] == 2  # waited until the stand-in reported ready
    pods = [i for i in target.diagnostics.instances() if i.track == "canary"]
    assert len(pods) == 2 and all(p.version == "2.0.0" and p.ready for p in pods)
    # the other containers' fields were kept by the strategic merge
    assert c["readinessProbe"]["httpGet"]["path"] == "/api/health/advanced"


def test_a_stuck_rollout_times_out_naming_the_deployment_and_what_is_missing(target, standin):
    standin.stuck.add("portal-canary")
    target.workloads.deployments.timeout_s = 0.3
    with pytest.raises(TargetError, match=r"Deployment portal-canary did not roll out .*0/1 ready"):
        target.workloads.deploy_canary(spec(), 1)


def test_an_invalid_write_is_refused_by_the_schema_and_changes_nothing(standin):
    apps = client.AppsV1Api(api_client(standin))
    before = standin.get("Deployment", NS, "portal-canary")
    with pytest.raises(ApiException) as info:
        apps.patch_namespaced_deployment("portal-canary", NS, {"spec": {"replicas": "many"}})
    assert info.value.status == 422 and "replicas" in str(info.value.body)
    assert standin.get("Deployment", NS, "portal-canary") == before


def test_set_weight_writes_the_canary_ingress_annotation(target, standin):
    target.router.set_weight(25)
    ingress = standin.get("Ingress", NS, "portal-canary")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] == "25"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] == "true"
    assert target.workloads.state().weight == 25
    with pytest.raises(TargetError, match="percentage"):
        target.router.set_weight(150)


def test_replica_ratio_mode_approximates_the_weight_with_pod_counts(standin, cfg):
    values_cfg = config()
    object.__setattr__(values_cfg.traffic, "mode", "replicas")
    t = kubernetes_target(
        values_cfg, api_client(standin), poll_s=0.01, timeout_s=5, sleep=lambda s: None
    )
    t.router.set_weight(50)
    assert standin.get("Deployment", NS, "portal-canary")["spec"]["replicas"] == 1
    assert standin.get("Deployment", NS, "portal-stable")["spec"]["replicas"] == 1
    assert t.workloads.state().weight == 50
    t.workloads.rollback()
    assert standin.get("Deployment", NS, "portal-canary")["spec"]["replicas"] == 0
    assert standin.get("Deployment", NS, "portal-stable")["spec"]["replicas"] == 2


def test_probe_canary_asks_every_canary_pod_through_the_pod_proxy(target, standin):
    target.workloads.deploy_canary(spec(), 2)
    bad = sorted(i.name for i in target.diagnostics.instances() if i.track == "canary")[0]
    standin.health = lambda pod, path: (
        (
            503,
            {
                "status": "unhealthy",
                "checks": {"database": {"status": "unhealthy", "error": "refused"}},
            },
        )
        if pod == bad
        else (200, {"status": "healthy"})
    )
    probes = {p.instance: p for p in target.diagnostics.probe("canary")}
    assert len(probes) == 2
    assert not probes[bad].ok and "503" in probes[bad].detail and "database" in probes[bad].detail
    assert sum(p.ok for p in probes.values()) == 1


def test_promote_moves_stable_to_the_release_and_empties_the_canary(target, standin):
    target.workloads.deploy_canary(spec(), 1)
    target.router.set_weight(50)
    target.workloads.promote(spec())
    c, dep = container(standin, "portal-stable")
    assert c["image"] == IMAGE
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0.0"
    state = target.workloads.state()
    assert state.weight == 0 and state.canary_replicas == 0
    assert state.stable_version == "2.0.0"


def test_rollback_leaves_stable_untouched(target, standin):
    before = standin.get("Deployment", NS, "portal-stable")["spec"]
    target.workloads.deploy_canary(spec(), 1)
    target.router.set_weight(25)
    target.workloads.rollback()
    assert standin.get("Deployment", NS, "portal-stable")["spec"] == before
    assert target.workloads.state().weight == 0 and target.workloads.state().canary_replicas == 0


def test_the_ledger_configmap_is_compare_and_swap(target, standin):
    store = target.ledger
    assert store.load() == (None, None)
    token = store.save({"incidents": []}, None)
    _doc, tok = store.load()
    theirs = {"id": "theirs", "opened_at": 0.0, "reason": "r"}
    store.save({"schema_version": 2, "incidents": [theirs]}, tok)
    with pytest.raises(ConflictError):
        store.save({"incidents": [{**theirs, "id": "mine"}]}, token)
    ledger = Ledger(target.ledger, "staging", target.name)
    ledger.update(lambda d: d.incidents.append(Incident(id="mine", opened_at=0.0, reason="r")))
    assert [i.id for i in ledger.read().incidents] == ["theirs", "mine"]
    stored = standin.get("ConfigMap", NS, "portal-releases")
    assert "ledger.json" in stored["data"]


def test_migrations_run_as_one_job_per_version_and_report_what_they_applied(target, standin, cfg):
    job = cfg.names.migration_job("2.0.0")
    standin.job_logs[job] = 'progress\n{"phase": "expand", "applied": ["0004_x"]}\n'
    result = target.migrator.run(spec(), "expand")
    assert result.ok and result.applied == ("0004_x",)
    created = standin.get("Job", NS, job)
    args = created["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["migrate", "--phase", "expand", "--json"]
    writes = len(standin.writes)
    again = target.migrator.run(spec(), "expand")  # the Job exists and succeeded: no new one
    assert again.ok and len(standin.writes) == writes


def test_a_failed_migration_job_is_reported(target, standin, cfg):
    job = cfg.names.migration_job("3.0.0")
    standin.failing_jobs.add(job)
    result = target.migrator.run(spec("3.0.0", "ghcr.io/acme/portal:3.0.0"), "expand")
    assert not result.ok and "BackoffLimitExceeded" not in result.detail
    assert "backoff limit" in result.detail
    assert target.diagnostics.job(job).failed_condition is True


def test_a_release_without_an_image_is_refused(target):
    with pytest.raises(TargetError, match="image"):
        target.workloads.deploy_canary(ReleaseSpec("r", "2.0.0", None), 1)
