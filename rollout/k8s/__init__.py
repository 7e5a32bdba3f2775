"""The Kubernetes target: the release engine's hands on a cluster, through the API server only.

It patches the objects the Pulumi components created (names from the contract), waits for
rollout status, probes each pod's health endpoint through the pod proxy, runs each version's
migrations as a Job, and keeps the ledger in a ConfigMap with compare-and-swap on its
resourceVersion. Prometheus, the Pushgateway and Alertmanager are reached through the API server's
service proxy with the same credentials, so a laptop with a kubeconfig needs nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes import client

from contract.config import StackConfig
from rollout.alerting import AlertmanagerClient
from rollout.k8s.api import (
    REQUEST_TIMEOUT_S,
    Deployments,
    harden,
    http_auth,
    kubeconfig_client,
    service_proxy,
)
from rollout.k8s.diagnostics import KubeDiagnostics, admin_unavailable
from rollout.k8s.ledger_store import ConfigMapLedgerStore
from rollout.k8s.migrator import JobMigrator, Jobs
from rollout.k8s.traffic import IngressRouter, ReplicaRouter
from rollout.k8s.workloads import KubeWorkloads
from rollout.ports import Target
from rollout.telemetry import PrometheusTelemetry

RATE_WINDOW = "5m"
"""The rate window of the alert rules: what a runbook on a cluster measures over."""


def kubernetes_target(
    cfg: StackConfig,
    api_client: client.ApiClient,
    *,
    poll_s: float = 2.0,
    timeout_s: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    prometheus_url: str | None = None,
    request_timeout_s: tuple[float, float] = REQUEST_TIMEOUT_S,
    alertmanager_url: str | None = None,
) -> Target:
    """The stack's namespace on the cluster ``api_client`` reaches (every call through it with
    ``request_timeout_s``, connect and read)."""
    harden(api_client, request_timeout_s)
    ns, names = cfg.namespace, cfg.names
    deployments = Deployments(api_client, ns, poll_s=poll_s, timeout_s=timeout_s, sleep=sleep)
    router: IngressRouter | ReplicaRouter = (
        ReplicaRouter(cfg, deployments)
        if cfg.traffic.mode == "replicas"
        else IngressRouter(cfg, api_client)
    )
    jobs = Jobs(api_client, ns)
    telemetry = PrometheusTelemetry(
        prometheus_url or service_proxy(api_client, ns, names.prometheus, names.prometheus_port),
        service_proxy(api_client, ns, names.pushgateway, names.pushgateway_port),
        rate_window=RATE_WINDOW,
        auth=http_auth(api_client),
        dashboard_hint=(
            f"reach it with `kubectl -n {ns} port-forward svc/{names.grafana} 3000` then "
            "http://localhost:3000{path}"
        ),
    )
    return Target(
        name=f"kubernetes:{ns}",
        workloads=KubeWorkloads(cfg, deployments, router),
        router=router,
        migrator=JobMigrator(cfg, jobs, poll_s=poll_s, timeout_s=timeout_s, sleep=sleep),
        ledger=ConfigMapLedgerStore(cfg, api_client),
        telemetry=telemetry,
        diagnostics=KubeDiagnostics(cfg, api_client, jobs),
        admin=admin_unavailable(cfg),
        alerting=AlertmanagerClient(
            alertmanager_url
            or service_proxy(api_client, ns, names.alertmanager, names.alertmanager_port),
            auth=http_auth(api_client),
        ),
    )


def from_kubeconfig(cfg: StackConfig, context: str | None = None) -> Target:
    """The stack on the cluster of the kubeconfig's ``context`` (or the current one)."""
    return kubernetes_target(cfg, kubeconfig_client(context))


__all__ = ["from_kubeconfig", "kubernetes_target"]
