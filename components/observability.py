"""Observability: Prometheus (scrape config and alert rules generated from the config model),
Alertmanager (routing to the stack's receivers, its config in a Secret because receivers carry
credentials), the Pushgateway that ``portalctl`` pushes release events to, kube-state-metrics
limited to the namespace (Job and Deployment state for the alert rules), Grafana with its
datasources and the two dashboards provisioned from files, and Jaeger all-in-one receiving OTLP.

Prometheus and kube-state-metrics read the Kubernetes API through ServiceAccounts bound to
namespace-scoped Roles; nothing here needs a ClusterRole.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from components import dashboards, kube
from components import observability_pods as pods
from contract import alertmanager, alerts, ports, prometheus_config, security
from contract.config import StackConfig
from contract.labels import (
    ALERTING,
    CLUSTER_METRICS,
    DASHBOARDS,
    MONITORING,
    RELEASE_EVENTS,
    TRACING,
    selector,
    standard_labels,
)
from contract.names import SCRAPE_TOKEN_KEY

PROMETHEUS_UID = 65534
GRAFANA_UID = 10472
"""Any uid runs the official image; a high one stays clear of the node's users."""
JAEGER_UID = 10001
NOBODY = 65534

GRAFANA_ADMIN_USER = "admin"


def checksum(*texts: str) -> str:
    """A pod-template annotation value that changes with the config, so pods roll on change."""
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def retention_size(storage_size: str) -> str | None:
    """90% of a Gi/Ti volume in Prometheus units, so the TSDB never fills its volume."""
    match = re.fullmatch(r"(\d+)(Gi|Ti)", storage_size)
    if not match:
        return None
    gib = int(match.group(1)) * (1024 if match.group(2) == "Ti" else 1)
    return f"{max(1, gib * 9 // 10)}GB"


@dataclass(frozen=True)
class ObservabilityArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""


class Observability(pulumi.ComponentResource):
    """Prometheus, Alertmanager, Pushgateway, kube-state-metrics, Grafana and Jaeger."""

    prometheus_service: pulumi.Output[str]
    alertmanager_service: pulumi.Output[str]
    pushgateway_service: pulumi.Output[str]
    grafana_service: pulumi.Output[str]
    jaeger_service: pulumi.Output[str]
    otlp_endpoint: pulumi.Output[str]
    """OTLP/HTTP endpoint of Jaeger for the app (``http://jaeger:4318``)."""
    grafana_password: pulumi.Output[str]
    kube_state_metrics_service: pulumi.Output[str]
    scrape_token: pulumi.Output[str]
    """The token Prometheus presents on the service's ``/metrics`` (the app Secret holds it too)."""
    prometheus_config: str
    """The generated ``prometheus.yml``."""
    rules: str
    """The generated alert rules."""

    def __init__(
        self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:observability:Observability", name, None, opts)
        self._name = name
        self._cfg = args.config
        self._ns = args.namespace
        self.prometheus_config = prometheus_config.render(
            args.config, prometheus_config.kubernetes_targets(args.config)
        )
        self.rules = alerts.render_rules(args.config)
        self.scrape_token = random.RandomPassword(
            f"{name}-scrape-token", length=48, special=False, opts=self._opts()
        ).result
        self.prometheus_service = self._prometheus()
        self.alertmanager_service = self._alertmanager()
        self.pushgateway_service = self._pushgateway()
        self.kube_state_metrics_service = self._kube_state_metrics()
        self.jaeger_service, self.otlp_endpoint = self._jaeger()
        self.grafana_service, self.grafana_password = self._grafana()
        self.register_outputs(
            {
                "prometheusService": self.prometheus_service,
                "alertmanagerService": self.alertmanager_service,
                "pushgatewayService": self.pushgateway_service,
                "grafanaService": self.grafana_service,
                "jaegerService": self.jaeger_service,
                "otlpEndpoint": self.otlp_endpoint,
            }
        )

    # -- helpers ---------------------------------------------------------------------------

    def _opts(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self)

    def _labels(self, name: str, component: str, image: str) -> dict[str, str]:
        return standard_labels(self._cfg, name, component, kube.image_tag(image))

    def _service(
        self,
        role: str,
        name: str,
        labels: dict[str, str],
        match: pulumi.Input[dict[str, str]],
        ports: list[k8s.core.v1.ServicePortArgs],
    ) -> pulumi.Output[str]:
        service = k8s.core.v1.Service(
            f"{self._name}-{role}-service",
            metadata=kube.metadata(name, self._ns, labels),
            spec=k8s.core.v1.ServiceSpecArgs(selector=match, ports=ports),
            opts=self._opts(),
        )
        return service.metadata.name

    def _deployment(
        self,
        role: str,
        name: str,
        labels: dict[str, str],
        match: dict[str, str],
        pod: k8s.core.v1.PodSpecArgs,
        *,
        recreate: bool = True,
        annotations: dict[str, pulumi.Input[str]] | None = None,
        skips: dict[str, str] | None = None,
    ) -> None:
        """One pod of ``pod``; ``recreate``: the old one goes before the new one starts;
        ``skips``: the scanner findings accepted for it."""
        k8s.apps.v1.Deployment(
            f"{self._name}-{role}",
            metadata=kube.metadata(name, self._ns, labels, skips or None),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate") if recreate else None,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels, annotations=annotations),
                    spec=pod,
                ),
            ),
            opts=self._opts(),
        )

    def _reader_account(
        self, role: str, name: str, labels: dict[str, str], rules: list[k8s.rbac.v1.PolicyRuleArgs]
    ) -> pulumi.Output[str]:
        """A ServiceAccount bound to a Role in the namespace."""
        account = k8s.core.v1.ServiceAccount(
            f"{self._name}-{role}-service-account",
            metadata=kube.metadata(name, self._ns, labels),
            opts=self._opts(),
        )
        rbac_role = k8s.rbac.v1.Role(
            f"{self._name}-{role}-role",
            metadata=kube.metadata(name, self._ns, labels),
            rules=rules,
            opts=self._opts(),
        )
        k8s.rbac.v1.RoleBinding(
            f"{self._name}-{role}-role-binding",
            metadata=kube.metadata(name, self._ns, labels),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io",
                kind="Role",
                name=rbac_role.metadata.name,
            ),
            subjects=[
                k8s.rbac.v1.SubjectArgs(
                    kind="ServiceAccount",
                    name=account.metadata.name,
                    namespace=self._ns,
                )
            ],
            opts=self._opts(),
        )
        return account.metadata.name

    # -- Prometheus ------------------------------------------------------------------------

    def _scrape_volume(self, labels: dict[str, str]) -> k8s.core.v1.VolumeArgs:
        """The scrape token's own Secret, as the volume ``scrape`` of the Prometheus pod (which
        sees no other key of the app's Secret)."""
        secret = k8s.core.v1.Secret(
            f"{self._name}-scrape-secret",
            metadata=kube.metadata(self._cfg.names.scrape_secret, self._ns, labels),
            type="Opaque",
            string_data={SCRAPE_TOKEN_KEY: self.scrape_token},
            opts=self._opts(),
        )
        return k8s.core.v1.VolumeArgs(
            name="scrape",
            secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=secret.metadata.name, default_mode=0o440
            ),
        )

    def _prometheus(self) -> pulumi.Output[str]:
        cfg = self._cfg
        obs = cfg.observability
        names = cfg.names
        labels = self._labels(names.prometheus, MONITORING, obs.prometheus_image)
        match = selector(names.prometheus, MONITORING)
        account = self._reader_account(
            "prometheus",
            names.prometheus,
            labels,
            [
                # kubernetes_sd (role: pod) in this namespace only.
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]
                ),
            ],
        )
        config = k8s.core.v1.ConfigMap(
            f"{self._name}-prometheus-config",
            metadata=kube.metadata(f"{names.prometheus}-config", self._ns, labels),
            data={
                "prometheus.yml": self.prometheus_config,
                prometheus_config.RULES_FILE: self.rules,
            },
            opts=self._opts(),
        )
        container = pods.prometheus(cfg, retention_size(obs.prometheus_storage_size))
        service = self._service(
            "prometheus",
            names.prometheus,
            labels,
            match,
            [kube.service_port("web", names.prometheus_port, "web")],
        )
        skips = security.skips(security.API_READER, security.unpinned(obs.prometheus_image))
        k8s.apps.v1.StatefulSet(
            f"{self._name}-prometheus",
            metadata=kube.metadata(names.prometheus, self._ns, labels, skips),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                replicas=1,
                service_name=service,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=labels,
                        annotations={
                            "checksum/config": checksum(self.prometheus_config, self.rules)
                        },
                    ),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=account,
                        security_context=kube.pod_security(PROMETHEUS_UID),
                        enable_service_links=False,
                        termination_grace_period_seconds=300,
                        containers=[container],
                        volumes=[
                            kube.config_map_volume("config", config.metadata.name),
                            self._scrape_volume(labels),
                        ],
                    ),
                ),
                volume_claim_templates=[
                    k8s.core.v1.PersistentVolumeClaimArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(name="data", labels=labels),
                        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                            access_modes=["ReadWriteOnce"],
                            resources=k8s.core.v1.VolumeResourceRequirementsArgs(
                                requests={"storage": obs.prometheus_storage_size}
                            ),
                        ),
                    )
                ],
            ),
            opts=self._opts(),
        )
        return service

    # -- Alertmanager ----------------------------------------------------------------------

    def _alertmanager(self) -> pulumi.Output[str]:
        cfg = self._cfg
        names = cfg.names
        image = cfg.observability.alertmanager_image
        labels = self._labels(names.alertmanager, ALERTING, image)
        match = selector(names.alertmanager, ALERTING)
        files = alertmanager.files(cfg)
        secret = k8s.core.v1.Secret(
            f"{self._name}-alertmanager-config",
            metadata=kube.metadata(f"{names.alertmanager}-config", self._ns, labels),
            type="Opaque",
            string_data={key: pulumi.Output.secret(text) for key, text in files.items()},
            opts=self._opts(),
        )
        pod = kube.single_pod(
            NOBODY,
            [pods.alertmanager(cfg)],
            [kube.secret_volume("config", secret.metadata.name), kube.empty_dir("data", "256Mi")],
        )
        # the config holds credentials: so does a digest of it
        digest = pulumi.Output.secret(checksum(*files.values()))
        self._deployment(
            "alertmanager",
            names.alertmanager,
            labels,
            match,
            pod,
            annotations={"checksum/config": digest},
            skips=security.skips(security.unpinned(image)),
        )
        return self._service(
            "alertmanager",
            names.alertmanager,
            labels,
            match,
            [kube.service_port("http", names.alertmanager_port, "http")],
        )

    # -- Pushgateway -----------------------------------------------------------------------

    def _pushgateway(self) -> pulumi.Output[str]:
        cfg = self._cfg
        names = cfg.names
        image = cfg.observability.pushgateway_image
        labels = self._labels(names.pushgateway, RELEASE_EVENTS, image)
        match = selector(names.pushgateway, RELEASE_EVENTS)
        pod = kube.single_pod(NOBODY, [pods.pushgateway(cfg)], [kube.empty_dir("data")])
        self._deployment(
            "pushgateway",
            names.pushgateway,
            labels,
            match,
            pod,
            skips=security.skips(security.unpinned(image)),
        )
        return self._service(
            "pushgateway",
            names.pushgateway,
            labels,
            match,
            [kube.service_port("http", names.pushgateway_port, "http")],
        )

    # -- kube-state-metrics ----------------------------------------------------------------

    def _kube_state_metrics(self) -> pulumi.Output[str]:
        cfg = self._cfg
        names = cfg.names
        image = cfg.observability.kube_state_metrics_image
        labels = self._labels(names.kube_state_metrics, CLUSTER_METRICS, image)
        match = selector(names.kube_state_metrics, CLUSTER_METRICS)
        account = self._reader_account(
            "kube-state-metrics",
            names.kube_state_metrics,
            labels,
            [
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""], resources=["pods"], verbs=["list", "watch"]
                ),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["apps"],
                    resources=["deployments", "replicasets", "statefulsets"],
                    verbs=["list", "watch"],
                ),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["batch"], resources=["jobs"], verbs=["list", "watch"]
                ),
            ],
        )
        pod = kube.single_pod(NOBODY, [pods.kube_state_metrics(cfg)], account=account)
        self._deployment(
            "kube-state-metrics",
            names.kube_state_metrics,
            labels,
            match,
            pod,
            recreate=False,
            skips=security.skips(security.API_READER, security.unpinned(image)),
        )
        port = ports.KUBE_STATE_METRICS
        return self._service(
            "kube-state-metrics",
            names.kube_state_metrics,
            labels,
            match,
            [kube.service_port("http-metrics", port, "http-metrics")],
        )

    # -- Jaeger ----------------------------------------------------------------------------

    def _jaeger(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        cfg = self._cfg
        obs = cfg.observability
        names = cfg.names
        labels = self._labels(names.jaeger, TRACING, obs.jaeger_image)
        match = selector(names.jaeger, TRACING)
        pod = kube.single_pod(JAEGER_UID, [pods.jaeger(cfg)], [kube.empty_dir("tmp")])
        self._deployment(
            "jaeger",
            names.jaeger,
            labels,
            match,
            pod,
            skips=security.skips(security.unpinned(obs.jaeger_image)),
        )
        service = self._service(
            "jaeger",
            names.jaeger,
            labels,
            match,
            [
                kube.service_port("ui", pods.JAEGER_UI_PORT, "ui"),
                kube.service_port("otlp-grpc", pods.JAEGER_OTLP_GRPC_PORT, "otlp-grpc"),
                kube.service_port("otlp-http", pods.JAEGER_OTLP_HTTP_PORT, "otlp-http"),
            ],
        )
        return service, pulumi.Output.format("http://{0}:{1}", service, pods.JAEGER_OTLP_HTTP_PORT)

    # -- Grafana ---------------------------------------------------------------------------

    def _grafana(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        cfg = self._cfg
        obs = cfg.observability
        names = cfg.names
        labels = self._labels(names.grafana, DASHBOARDS, obs.grafana_image)
        match = selector(names.grafana, DASHBOARDS)
        password = random.RandomPassword(
            f"{self._name}-grafana-password", length=24, special=False, opts=self._opts()
        )
        secret = k8s.core.v1.Secret(
            f"{self._name}-grafana-secret",
            metadata=kube.metadata(f"{names.grafana}-admin", self._ns, labels),
            type="Opaque",
            string_data={pods.USER_KEY: GRAFANA_ADMIN_USER, pods.PASSWORD_KEY: password.result},
            opts=self._opts(),
        )
        interval = prometheus_config.prometheus_duration(obs.scrape_interval_s)
        provisioning_files = {
            "datasources.yaml": yaml.safe_dump(
                dashboards.datasources(
                    f"http://{names.prometheus}:{names.prometheus_port}",
                    f"http://{names.jaeger}:{pods.JAEGER_UI_PORT}",
                    interval,
                ),
                sort_keys=False,
            ),
            "dashboards.yaml": yaml.safe_dump(dashboards.dashboard_provider(), sort_keys=False),
        }
        provisioning = k8s.core.v1.ConfigMap(
            f"{self._name}-grafana-provisioning",
            metadata=kube.metadata(f"{names.grafana}-provisioning", self._ns, labels),
            data=provisioning_files,
            opts=self._opts(),
        )
        dashboard_files = dashboards.dashboard_texts()
        dashboard_map = k8s.core.v1.ConfigMap(
            f"{self._name}-grafana-dashboards",
            metadata=kube.metadata(f"{names.grafana}-dashboards", self._ns, labels),
            data=dashboard_files,
            opts=self._opts(),
        )
        secret_name = secret.metadata.name
        pod = kube.single_pod(
            GRAFANA_UID,
            [pods.grafana(cfg, GRAFANA_ADMIN_USER)],
            [
                kube.secret_volume("admin", secret_name, [pods.PASSWORD_KEY]),
                pods.grafana_provisioning(provisioning.metadata.name),
                kube.config_map_volume("dashboards", dashboard_map.metadata.name),
                kube.empty_dir("data", "1Gi"),
                kube.empty_dir("tmp"),
            ],
        )
        config = checksum(
            json.dumps(provisioning_files, sort_keys=True),
            json.dumps(dashboard_files, sort_keys=True),
        )
        self._deployment(
            "grafana",
            names.grafana,
            labels,
            match,
            pod,
            annotations={"checksum/config": config},
            skips=security.skips(security.unpinned(obs.grafana_image)),
        )
        service = self._service(
            "grafana",
            names.grafana,
            labels,
            match,
            [kube.service_port("http", pods.GRAFANA_PORT, "http")],
        )
        return service, password.result
