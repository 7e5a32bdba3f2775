"""What `pulumi up -s staging|prod` creates, and how it is wired (program under mocks)."""

from __future__ import annotations

import json

import pytest

from app.keys import KeySet
from components.mockrun import default_password, run_program
from contract import prometheus_config
from contract.config import read_stack_values
from contract.names import AUTH_KEYS, METRICS_TOKEN, SCRAPE_TOKEN_KEY, SECRETS_DIR
from tests.conftest import REPO

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
VERSION = "app.kubernetes.io/version"


def pod_spec(manifest):
    kind = manifest["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        return manifest["spec"]["template"]["spec"]
    return None


def pod_labels(manifest):
    return manifest["spec"]["template"]["metadata"].get("labels", {})


def test_every_object_carries_the_standard_labels_and_lives_in_the_stack_namespace(run):
    for c in run.kubernetes():
        m = c.manifest()
        labels = m["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{c.kind} {c.object_name} lacks {missing}"
        if c.kind != "Namespace":
            assert m["metadata"]["namespace"] == f"portal-{run.stack}", c.object_name


def test_the_version_label_is_only_where_it_stays_true(run, configs):
    """Objects of one version carry it (Postgres, Redis and the monitoring by their image tag, the
    migration Job and every portal pod by the app version); the portal's objects that outlive its
    releases carry none, since a release moves the version on the pods without Pulumi."""
    cfg = configs[run.stack]
    for c in run.kubernetes():
        m = c.manifest()
        labels = m["metadata"].get("labels", {})
        if labels["app.kubernetes.io/name"] == cfg.names.app and c.kind != "Job":
            assert VERSION not in labels, f"{c.kind} {c.object_name}: {labels}"
        else:
            assert labels.get(VERSION), f"{c.kind} {c.object_name} lacks {VERSION}"
        if c.kind in ("Deployment", "StatefulSet", "Job"):
            assert pod_labels(m).get(VERSION), f"the pods of {c.kind} {c.object_name}"
    for name in ("portal-stable", "portal-canary"):
        pods = pod_labels(run.get("Deployment", name).manifest())
        assert pods[VERSION] == cfg.app.version, name


def test_postgres_is_a_statefulset_with_storage_exporter_probes_and_a_generated_password(run):
    sts = run.get("StatefulSet", "postgres").manifest()
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"]
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    assert len(containers) == 2 and any("exporter" in n for n in containers)
    for c in containers.values():
        assert c.get("readinessProbe") and c.get("livenessProbe") and c.get("resources")
    secret = run.get("Secret", "postgres-auth")
    assert "/stringData" in secret.secret_paths
    assert "postgres-password" in secret.dependencies[-1] or any(
        "postgres-password" in d for d in secret.dependencies
    )


def test_the_migration_job_runs_after_postgres_and_its_roles_and_before_the_app(run, configs):
    cfg = configs[run.stack]
    roles = run.get("Job", cfg.names.postgres_roles)
    assert any("postgres-statefulset" in d for d in roles.dependencies)
    job = run.get("Job", cfg.names.migration_job(cfg.app.version))
    assert any("postgres-roles" in d for d in job.dependencies)
    for name in ("portal-stable", "portal-canary"):
        assert any("migration-job" in d for d in run.get("Deployment", name).dependencies)
    spec = job.manifest()["spec"]
    assert spec["backoffLimit"] == cfg.migrations.backoff_limit
    assert spec["activeDeadlineSeconds"] == cfg.migrations.active_deadline_seconds
    assert spec["ttlSecondsAfterFinished"] > 0
    args = json.dumps(spec["template"]["spec"])
    assert "migrate" in args and cfg.app.stable_image in args


def test_a_new_version_gets_a_new_migration_job(configs):
    cfg = configs["staging"]
    assert cfg.names.migration_job("1.0.0") != cfg.names.migration_job("1.1.0")


def test_the_backup_runs_only_where_configured(runs):
    prod_job = json.dumps(runs["prod"].get("Job", "portal-migrate-1-0-0").manifest())
    staging_job = json.dumps(runs["staging"].get("Job", "portal-migrate-1-0-0").manifest())
    assert "acme-portal-backups" in prod_job and "pg_dump" in prod_job
    assert "pg_dump" not in staging_job


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_portalctl_creates_the_same_migration_job_as_the_program(runs, configs, stack):
    from components.render import validate
    from contract.labels import MANAGED_BY
    from contract.migration import migration_job

    cfg = configs[stack]
    name = cfg.names.migration_job(cfg.app.version)
    program = runs[stack].get("Job", name).manifest()
    by_portalctl = migration_job(cfg, cfg.app.version, cfg.app.stable_image, managed_by="portalctl")
    validate(by_portalctl)
    for job in (program, by_portalctl):
        job["metadata"].pop("namespace", None)
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            labels.pop(MANAGED_BY)
    assert by_portalctl == program
    init = [c["name"] for c in by_portalctl["spec"]["template"]["spec"].get("initContainers", [])]
    assert init == (["pg-dump", "s3-upload"] if cfg.migrations.backup.enabled else [])


def test_the_canary_ingress_splits_traffic_and_the_engine_owns_its_weight(run):
    ingress = run.get("Ingress", "portal-canary")
    annotations = ingress.manifest()["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "0"
    assert any("canary-weight" in path for path in ingress.ignore_changes)


def _prefix_routes(prefix: str, path: str) -> bool:
    """Kubernetes ``Prefix`` matching: whole path elements."""
    want, have = prefix.strip("/").split("/"), path.strip("/").split("/")
    return have[: len(want)] == want


def test_the_ingresses_route_only_the_business_routes(run):
    """The public Ingress (and its canary) route ``/api/``: the API and its public health, not
    the scrape endpoint or the API's docs."""
    for name in ("portal", "portal-canary"):
        (rule,) = run.get("Ingress", name).manifest()["spec"]["rules"]
        paths = [(p["path"], p["pathType"]) for p in rule["http"]["paths"]]
        assert paths == [("/api/", "Prefix")], (name, paths)
        for routed in ("/api/users/7", "/api/plans", "/api/health", "/api/health/advanced"):
            assert _prefix_routes(paths[0][0], routed), routed
        for private in (prometheus_config.APP_METRICS_PATH, "/docs", "/openapi.json", "/apix"):
            assert not _prefix_routes(paths[0][0], private), private


def test_pulumi_never_fights_a_release_over_image_version_or_replicas(run):
    """The release engine sets the canary's image, version and replicas during a release and
    stable's image and version on promotion; the autoscaler sets stable's replicas."""
    version = 'spec.template.metadata.labels["app.kubernetes.io/version"]'
    for name in ("portal-canary", "portal-stable"):
        ignored = run.get("Deployment", name).ignore_changes
        assert "spec.replicas" in ignored, name
        assert "spec.template.spec.containers[0].image" in ignored, name
        assert version in ignored, name


def test_the_migration_job_is_not_replaced_when_a_promotion_rewrites_the_version(run):
    job = next(
        j
        for j in run.find("Job")
        if j.manifest()["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"
    )
    assert "metadata.name" in job.ignore_changes
    assert "spec.template" in job.ignore_changes


def test_app_probes_security_context_and_track_labels(run):
    for name, track in (("portal-stable", "stable"), ("portal-canary", "canary")):
        m = run.get("Deployment", name).manifest()
        assert pod_labels(m)["portal.dev/track"] == track
        spec = pod_spec(m)
        assert spec["securityContext"]["runAsNonRoot"] is True
        c = spec["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/api/health"
        assert c["readinessProbe"]["httpGet"]["path"] == "/api/health/advanced"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        env = {e["name"]: e for e in c["env"]}
        assert env["PORTAL_TRACK"]["value"] == track
        assert "fieldRef" in env["PORTAL_VERSION"]["valueFrom"]
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env
        assert env["PORTAL_TRACE_SAMPLE_RATIO"]["value"] == "1", "every request traced by default"
        assert env["PORTAL_RESPONSE_HEADERS"]["value"] == "on", "the X- headers by default"
    assert run.get("HorizontalPodAutoscaler", "portal-stable")
    assert run.get("PodDisruptionBudget", "portal-stable")


def test_every_service_selects_pods_and_targets_a_port_they_expose(run):
    workloads = [c.manifest() for c in run.kubernetes() if c.kind in ("Deployment", "StatefulSet")]
    for svc in run.find("Service"):
        m = svc.manifest()
        selector = m["spec"]["selector"]
        matches = [
            w for w in workloads if all(pod_labels(w).get(k) == v for k, v in selector.items())
        ]
        assert matches, f"Service {svc.object_name} selects no pods"
        ports = {
            p.get("name")
            for w in matches
            for c in pod_spec(w)["containers"]
            for p in c.get("ports", [])
        } | {
            p["containerPort"]
            for w in matches
            for c in pod_spec(w)["containers"]
            for p in c.get("ports", [])
        }
        for port in m["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, (svc.object_name, port)


def test_every_secret_reference_points_at_a_secret_key_that_exists(run):
    secrets = {}
    for c in run.find("Secret"):
        m = c.manifest()
        secrets[c.object_name] = set(m.get("stringData", {})) | set(m.get("data", {}))
    external = {"portal-backup-s3"}  # created by the operator (config: credentialsSecret)
    for c in run.kubernetes():
        m = c.manifest()
        spec = pod_spec(m)
        if spec is None:
            continue
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external:
                    assert ref["key"] in secrets.get(ref["name"], set()), (c.object_name, ref)
            for src in container.get("envFrom", []):
                ref = src.get("secretRef")
                if ref:
                    assert ref["name"] in secrets, (c.object_name, ref)


def test_no_generated_password_appears_outside_secret_inputs(run):
    assert run.passwords
    for c in run.resources:
        text = json.dumps(c.inputs)
        for password in run.passwords.values():
            if password in text:
                assert c.secret_paths, f"{c.type} {c.name} carries a password in plain text"
    for key, value in run.outputs.items():
        if any(p in json.dumps(value) for p in run.passwords.values()):
            assert key in run.secret_outputs, key


def test_observability_stack_and_dashboards_are_deployed(run):
    for kind, name in (
        ("StatefulSet", "prometheus"),
        ("Deployment", "grafana"),
        ("Deployment", "jaeger"),
        ("Deployment", "pushgateway"),
        ("Deployment", "kube-state-metrics"),
    ):
        assert run.get(kind, name)
    dashboards = run.get("ConfigMap", "grafana-dashboards").manifest()["data"]
    assert len(dashboards) == 2
    provisioning = json.dumps(run.get("ConfigMap", "grafana-provisioning").manifest())
    assert "prometheus" in provisioning.lower() and "jaeger" in provisioning.lower()
    assert "alerts.yml" in run.get("ConfigMap", "prometheus-config").manifest()["data"]


def test_outputs_name_what_the_release_engine_needs(run):
    for key in (
        "namespace",
        "url",
        "stableDeployment",
        "canaryDeployment",
        "canaryIngress",
        "migrationJob",
        "appImage",
        "prometheusService",
        "images",
    ):
        assert key in run.outputs
    assert "grafanaAdminPassword" in run.secret_outputs


@pytest.mark.parametrize(
    ("what", "read"),
    [
        (
            "stable replicas",
            lambda r: r.get("Deployment", "portal-stable").manifest()["spec"]["replicas"],
        ),
        (
            "app memory limit",
            lambda r: r.get("Deployment", "portal-stable").manifest()["spec"]["template"]["spec"][
                "containers"
            ][0]["resources"]["limits"]["memory"],
        ),
        (
            "postgres storage",
            lambda r: r.get("StatefulSet", "postgres").manifest()["spec"]["volumeClaimTemplates"][
                0
            ]["spec"]["resources"]["requests"]["storage"],
        ),
        (
            "prometheus retention",
            lambda r: [
                a
                for a in r.get("StatefulSet", "prometheus").manifest()["spec"]["template"]["spec"][
                    "containers"
                ][0]["args"]
                if "retention" in a
            ],
        ),
        (
            "alert rules",
            lambda r: r.get("ConfigMap", "prometheus-config").manifest()["data"]["alerts.yml"],
        ),
    ],
)
def test_staging_and_prod_differ_where_they_should(runs, what, read):
    assert read(runs["staging"]) != read(runs["prod"]), what


def test_prod_is_bigger_than_staging(runs, configs):
    s, p = configs["staging"], configs["prod"]
    assert p.app.replicas > s.app.replicas
    assert len(p.canary.steps) > len(s.canary.steps)
    assert any(step.pause for step in p.canary.steps)
    assert p.slo.max_error_rate < s.slo.max_error_rate
    assert len(runs["prod"].resources) >= len(runs["staging"].resources)


def test_the_program_runs_after_other_asyncio_code_closed_the_loop():
    import asyncio

    from components.render import run_stack
    from tests.conftest import REPO

    async def nothing():
        return None

    asyncio.run(nothing())  # leaves the thread without a current event loop
    assert len(run_stack("staging", REPO).resources) >= 40


def test_the_service_reads_its_token_keys_and_the_scrape_token_as_files(run):
    env_secret = run.get("Secret", "portal-env").manifest()["stringData"]
    keys = KeySet.parse(env_secret[AUTH_KEYS], "portal-env")
    assert [kid for kid, _ in keys.keys] == ["k1"], "one generated key per authKeyIds entry"
    for name in ("portal-stable", "portal-canary"):
        spec = pod_spec(run.get("Deployment", name).manifest())
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[f"{AUTH_KEYS}_FILE"] == f"{SECRETS_DIR}/{AUTH_KEYS}"
        assert env[f"{METRICS_TOKEN}_FILE"] == f"{SECRETS_DIR}/{METRICS_TOKEN}"
        assert "PORTAL_ADMIN_TOKEN" not in env, "the service refuses the old admin token"
        assert (env["PORTAL_DB_STATEMENT_TIMEOUT_MS"], env["PORTAL_DB_LOCK_TIMEOUT_MS"]) == (
            "5000",
            "1000",
        )
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
        assert volume["secretName"] == "portal-env"
        # The whole Secret, each key a file that <KEY>_FILE names, readable by the pod's group.
        assert "items" not in volume and volume["defaultMode"] == 0o440
        assert {f"{key}_FILE" for key in env_secret} <= set(env)
    prometheus = pod_spec(run.get("StatefulSet", "prometheus").manifest())
    mount = next(
        m
        for m in prometheus["containers"][0]["volumeMounts"]
        if m["mountPath"] == prometheus_config.SCRAPE_TOKEN_DIR
    )
    volume = next(v for v in prometheus["volumes"] if v["name"] == mount["name"])["secret"]
    scrape = run.get("Secret", volume["secretName"]).manifest()["stringData"]
    assert scrape[SCRAPE_TOKEN_KEY] == env_secret[METRICS_TOKEN], "one token, both sides"
    assert "PORTAL_METRICS_TOKEN" not in json.dumps(prometheus), "Prometheus sees no app secret"


@pytest.mark.parametrize(
    ("password", "changed"),
    [
        ("postgres-app-password", {"Job postgres-roles"}),
        ("redis-exporter-password", {"Deployment redis"}),
        ("observability-grafana-password", set()),
    ],
)
def test_a_new_password_reruns_the_roles_job_or_rolls_redis_and_nothing_else(password, changed):
    """A regenerated role or ACL password changes the pod template of what loads it (the roles
    Job is replaced and runs again; Redis, which reads its ACL file at start, rolls); Grafana
    reads its password from the Secret at every start, so nothing else changes."""

    def new(name: str) -> str:
        return "rotated-" + default_password(name) if name == password else default_password(name)

    def templates(run):
        return {
            f"{c.kind} {c.object_name}": json.dumps(c.manifest()["spec"]["template"])
            for c in run.kubernetes()
            if pod_spec(c.manifest()) is not None
        }

    values = read_stack_values(REPO / "Pulumi.staging.yaml")
    before = templates(run_program("staging", values))
    after = templates(run_program("staging", values, password=new))
    assert before.keys() == after.keys()
    assert {k for k in before if before[k] != after[k]} == changed
