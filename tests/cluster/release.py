"""A stack to release into on the real control plane, and ``portalctl`` holding only the README's
RBAC.

``deploy_release_stack`` renders staging with a namespace of its own, 1 s scrapes and short
canary windows into a project directory, enables the data plane there, applies the objects,
waits until every workload is available (the app, Postgres, Redis, Prometheus, the Pushgateway
and Alertmanager as real processes), then ``serve_release_stack`` seeds the database and starts
steady load through the ingress controller (``tests/pulumi/test_release_after_up.py`` calls it on a
stack ``pulumi up`` deployed, with ``fast_values`` in its stack file). ``ReleaseStack.portalctl``
runs the CLI as a user would, with a kubeconfig whose token belongs to a ServiceAccount bound to
the Role the README documents.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from contract.config import StackConfig, load_stack
from contract.names import AUTH_KEYS, DATABASE_URL, NAMES
from rollout.k8s.api import http_auth, service_proxy
from rollout.ledger import LedgerDoc
from rollout.local.credentials import Credentials, StackAuth
from rollout.local.load import LoadGenerator
from rollout.prometheus import Prometheus
from tests.cluster.conftest import (
    NotYet,
    apply_stack,
    render,
    server_side_apply,
    stack_project,
    stack_values,
    wait_converged,
    wait_for,
)
from tests.conftest import REPO
from tests.dataplane.ingress import IngressController

STACK = "staging"
PORTALCTL = [sys.executable, "-c", "from rollout.cli import main; main()"]
ACCOUNT = "portalctl"
FAST: dict[str, Any] = {
    "steps": [{"weight": 30, "analysis": "4s"}, {"weight": 100, "analysis": "3s"}],
    "interval": "1s",
    "settle": "1s",
    "minRequests": 10,
    "leaseTtl": "4s",
    "onInsufficientData": {"limit": "10s", "then": "fail"},
    "onProviderError": {"limit": "6s", "then": "abort"},
}


def fast_values() -> dict[str, Any]:
    """The ``portal:`` keys of staging's stack file a release stack replaces: 1 s scrapes, the
    ``FAST`` canary windows, a migration Job that is not retried."""
    return {
        "observability": {**stack_values(STACK, "observability"), "scrapeInterval": "1s"},
        "canary": {**stack_values(STACK, "canary"), **FAST},
        "migrations": {"backoffLimit": 0},
    }


def readme_role(namespace: str) -> dict[str, Any]:
    """The Role the README documents for ``portalctl`` (its yaml block), in ``namespace``."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    role = next(yaml.safe_load(b) for b in blocks if re.search(r"^kind: Role$", b, re.M))
    role["metadata"]["namespace"] = namespace
    return dict(role)


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every rule."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def bind(kube: client.ApiClient, control_plane: Any, role: dict[str, Any], out: Path) -> Path:
    """ServiceAccount ``portalctl`` bound to ``role`` (replaced if it exists); a kubeconfig with
    a token of that account, written to ``out``."""
    namespace = role["metadata"]["namespace"]
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
    }
    for create, replace, body in (
        (core.create_namespaced_service_account, core.replace_namespaced_service_account, account),
        (rbac.create_namespaced_role, rbac.replace_namespaced_role, role),
        (rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding, binding),
    ):
        try:
            create(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            replace(body["metadata"]["name"], namespace, body)
    token = core.create_namespaced_service_account_token(
        ACCOUNT,
        namespace,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 7200}},
    ).status.token  # fmt: skip
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "portal",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority-data": base64.b64encode(
                        Path(control_plane.ca).read_bytes()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": ACCOUNT, "context": {"cluster": "portal", "user": ACCOUNT}}],
        "current-context": ACCOUNT,
    }
    out.write_text(json.dumps(config))
    out.chmod(0o600)
    return out


@dataclass
class ReleaseStack:
    namespace: str
    project: Path
    kubeconfig: Path
    kube: client.ApiClient
    ingress: IngressController
    load: LoadGenerator
    role: dict[str, Any]
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.kube)

    @property
    def apps(self) -> Any:
        return client.AppsV1Api(self.kube)

    def config(self) -> StackConfig:
        return load_stack(STACK, self.project)

    def stop(self) -> None:
        """The load and the ingress controller stopped (the stack itself stays)."""
        self.load.stop()
        self.ingress.stop()

    def set_canary(self, **overrides: Any) -> None:
        """``portal:canary`` of the project's stack file: the fast windows plus ``overrides``."""
        path = self.project / f"Pulumi.{STACK}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["config"]["portal:canary"] = {**stack_values(STACK, "canary"), **FAST, **overrides}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def portalctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.start(*args).communicate_result(timeout)

    def start(self, *args: str) -> Running:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "COLUMNS": "200",
            **self.extra_env,
        }
        argv = [*PORTALCTL, *args]
        if args[0] in ("release", "rollback", "runbook"):
            argv += ["--stack", STACK, "--project-dir", str(self.project)]
        proc = subprocess.Popen(  # no terminal: a prompt's answer is no
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        return Running(proc, argv)

    def ledger(self) -> LedgerDoc:
        cm = self.core.read_namespaced_config_map(self.config().names.ledger, self.namespace)
        return LedgerDoc.model_validate(json.loads(cm.data["ledger.json"]))

    def ingress_weight(self) -> int:
        names = self.config().names
        ing = client.NetworkingV1Api(self.kube).read_namespaced_ingress(
            names.canary_ingress, self.namespace
        )
        return int(ing.metadata.annotations["nginx.ingress.kubernetes.io/canary-weight"])

    def versions(self, track: str) -> set[str]:
        """What each ready pod of ``track`` answers on /api/health, through the pod proxy."""
        out = set()
        pods = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"app.kubernetes.io/component=api,portal.dev/track={track}",
        ).items
        for pod in pods:
            if pod.metadata.deletion_timestamp or pod.status.phase != "Running":
                continue
            raw = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod.metadata.name}:8000", self.namespace, "api/health", _preload_content=False
            ).data
            out.add(json.loads(raw)["version"])
        return out

    def stable_settled(self, version: str) -> set[str]:
        """Wait until every stable pod runs ``version`` (a rollout's old pods are gone)."""

        def settled() -> set[str] | NotYet:
            seen = self.versions("stable")
            return seen if seen == {version} else NotYet(f"stable answers {sorted(seen)}")

        return wait_for(f"stable running only {version}", settled, timeout=120)


@dataclass
class Running:
    proc: subprocess.Popen[str]
    argv: list[str]

    def communicate_result(self, timeout: float) -> subprocess.CompletedProcess[str]:
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err)


def live_secret(kube: client.ApiClient, cfg: StackConfig, name: str) -> dict[str, str]:
    """The keys of the stack's Secret ``name`` as the cluster holds them (applied from the
    render, or made by ``pulumi up`` with its generated values)."""
    secret = client.CoreV1Api(kube).read_namespaced_secret(name, cfg.namespace)
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


def app_secret(kube: client.ApiClient, cfg: StackConfig) -> dict[str, str]:
    """The keys of the stack's app Secret (``portal-env``) as the cluster holds them."""
    return live_secret(kube, cfg, cfg.names.app_secret)


def credentials(kube: client.ApiClient, cfg: StackConfig, workdir: Path, users: int) -> Credentials:
    """Tokens of an operator (admin scope) and users 1..``users``, minted with the stack's key
    set (its Secret's ``PORTAL_AUTH_KEYS``) as an operator mints them."""
    auth = StackAuth(workdir)
    auth.dir.mkdir(parents=True, exist_ok=True)
    auth.keys_file.write_text(app_secret(kube, cfg)[AUTH_KEYS])
    return auth.credentials(users)


def seed(kube: client.ApiClient, cfg: StackConfig, users: int) -> None:
    """``python -m app seed`` against the stack's Postgres, from the host at the pod's IP, as the
    migration role (an operator's data load, as the local stack seeds)."""
    url = live_secret(kube, cfg, cfg.names.migrate_secret)[DATABASE_URL]
    pod = client.CoreV1Api(kube).read_namespaced_pod(f"{cfg.names.postgres}-0", cfg.namespace)
    dsn = url.replace(f"@{cfg.names.postgres}:", f"@{pod.status.pod_ip}:")
    subprocess.run(
        [sys.executable, "-m", "app", "seed", "--users", str(users)],
        cwd=REPO,
        env={**os.environ, "PORTAL_DATABASE_URL": dsn},
        check=True,
        capture_output=True,
        timeout=300,
    )


def deploy_release_stack(
    kube: client.ApiClient,
    dynamic: DynamicClient,
    control_plane: Any,
    data_plane: Any,
    namespace: str,
    workdir: Path,
) -> ReleaseStack:
    project = stack_project(workdir / "project", STACK, namespace=namespace, **fast_values())
    objects = render(STACK, workdir / "manifests", project)
    data_plane.enable(namespace)

    # as `pulumi up` orders them: the workloads but the portal's, then the roles Job once Postgres
    # is ready, the migration Job (as portal_migrator) once the roles exist, then the portal's
    # Deployments (which connect as portal_app)
    def portal(o: dict[str, Any]) -> bool:
        name: str = o["metadata"]["name"]
        return o["kind"] == "Deployment" and name.startswith(f"{NAMES.app}-")

    workloads = [o for o in objects if o["kind"] != "Job" and not portal(o)]
    jobs = sorted(
        (o for o in objects if o["kind"] == "Job"),
        key=lambda o: o["metadata"]["name"] != NAMES.postgres_roles,
    )
    apply_stack(kube, dynamic, workloads, namespace)
    wait_converged(kube, workloads, namespace)
    for job in jobs:
        server_side_apply(dynamic, job)
        wait_converged(kube, [job], namespace)
    deployments = [o for o in objects if portal(o)]
    for deployment in deployments:
        server_side_apply(dynamic, deployment)
    wait_converged(kube, deployments, namespace)
    return serve_release_stack(kube, control_plane, project, workdir)


def serve_release_stack(
    kube: client.ApiClient, control_plane: Any, project: Path, workdir: Path
) -> ReleaseStack:
    """Staging of ``project``, up with its pods served by the data plane, made ready for
    releases: seeded, the README's Role bound for ``portalctl``, steady load through the ingress
    controller, and Prometheus scraping the stable pods' requests."""
    cfg = load_stack(STACK, project)
    namespace = cfg.namespace
    seed(kube, cfg, users=2000)
    role = readme_role(namespace)
    kubeconfig = bind(kube, control_plane, role, workdir / "portalctl.kubeconfig")
    ingress = IngressController(kube, namespace, workdir / "ingress").start()
    tokens = credentials(kube, cfg, workdir, users=2000)
    load = LoadGenerator(ingress.url, tokens, rate_per_s=40).start()
    stack = ReleaseStack(namespace, project, kubeconfig, kube, ingress, load, role)
    try:
        # Prometheus scrapes the stable pods it discovered through the API
        prom = prometheus(kube, namespace)
        wait_for(
            "Prometheus scraping the stable pods' requests",
            lambda: (prom.value("sum(http_requests_total{track='stable'})") or 0) > 0,
        )
    except BaseException:
        stack.stop()
        raise
    return stack


def prometheus(kube: client.ApiClient, namespace: str) -> Prometheus:
    """The stack's Prometheus through the API server's service proxy (the admin's token)."""
    auth = http_auth(kube)
    url = service_proxy(kube, namespace, "prometheus", 9090)
    return Prometheus(url, headers=auth.headers, ssl_context=auth.ssl_context)


def audit_events(control_plane: Any, user: str, since: float = 0.0) -> list[dict[str, Any]]:
    """The API server's audit events of ``user`` (as received after ``since``, epoch seconds)."""
    out = []
    for line in Path(control_plane.audit_log).read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != user:
            continue
        received = dt.datetime.fromisoformat(event["requestReceivedTimestamp"])
        if received.timestamp() >= since:
            out.append(event)
    return out
