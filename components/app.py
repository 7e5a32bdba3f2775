"""The portal service: stable and canary Deployments, their Services, the traffic split, the
autoscaler and the disruption budget.

Traffic split (``traffic.mode``):

- ``ingress``: Services ``portal-stable`` and ``portal-canary``, Ingress ``portal`` to stable and an
  ingress-nginx canary Ingress ``portal-canary`` whose ``canary-weight`` annotation the release
  engine sets.
- ``replicas`` (no ingress controller): one Service ``portal`` over both tracks; the weight is the
  ratio of canary to stable pods, which the release engine sets through the canary's replicas.

The release engine owns the canary's replicas, image and version label and the canary weight; the
autoscaler owns the stable replicas. Those fields are left out of Pulumi's diffs
(``ignore_changes``) so ``pulumi up`` never fights a release in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from contract import ports, security
from contract.config import StackConfig
from contract.labels import (
    API,
    CANARY_ANNOTATION,
    CANARY_WEIGHT_ANNOTATION,
    TRACK,
    VERSION,
    Track,
    app_selector,
    selector,
    standard_labels,
)
from contract.migration import APP_COMMAND
from contract.names import SECRETS_DIR
from contract.prometheus_config import APP_METRICS_PATH, SCRAPE_ANNOTATIONS

SERVICE_PORT = 80
PUBLIC_PREFIX = "/api/"
"""The only path the Ingresses route: the business routes (and the public health probe)."""
LIVENESS_PATH = "/api/health"
READINESS_PATH = "/api/health/advanced"

RELEASED = (
    "spec.template.spec.containers[0].image",
    f'spec.template.metadata.labels["{VERSION}"]',
)
"""The version a Deployment's pods run: the release engine sets it (its container is the first)
on the canary for a release and on stable when it promotes or rolls back; ``pulumi up`` sets it
only when it creates the Deployment, from ``portal:app.version``, which a promotion rewrites."""
CANARY_IGNORED = ("spec.replicas", *RELEASED)
"""Fields of the canary Deployment the release engine owns."""
STABLE_IGNORED = ("spec.replicas", *RELEASED)
"""The autoscaler owns the stable replicas, the release engine its version."""
CANARY_INGRESS_IGNORED = (f'metadata.annotations["{CANARY_WEIGHT_ANNOTATION}"]',)


def pod_labels(cfg: StackConfig, track: Track) -> dict[str, str]:
    """Labels of a stable or canary pod (the contract with the release engine)."""
    return {
        **standard_labels(cfg, cfg.names.app, API, cfg.app.version),
        TRACK: track,
    }


@dataclass(frozen=True)
class AppArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""
    env_secret: pulumi.Input[str]
    """Name of the ``portal-env`` Secret."""
    env_keys: tuple[str, ...]
    """Its keys: each is a file in ``SECRETS_DIR`` that ``<KEY>_FILE`` names."""
    otlp_endpoint: pulumi.Input[str]
    """OTLP/HTTP endpoint of the trace collector (Jaeger)."""
    migration: pulumi.Resource
    """The migration Job of this version: the Deployments change only after it completed."""


class App(pulumi.ComponentResource):
    """The portal service and its traffic split."""

    service_account: k8s.core.v1.ServiceAccount
    stable: k8s.apps.v1.Deployment
    canary: k8s.apps.v1.Deployment
    services: dict[str, k8s.core.v1.Service]
    """By role: ``stable`` and ``canary`` (ingress mode) or ``shared`` (replicas mode)."""
    ingress: k8s.networking.v1.Ingress
    canary_ingress: k8s.networking.v1.Ingress | None
    hpa: k8s.autoscaling.v2.HorizontalPodAutoscaler
    pdb: k8s.policy.v1.PodDisruptionBudget
    url: str

    def __init__(
        self, name: str, args: AppArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:app:App", name, None, opts)
        cfg = args.config
        names = cfg.names
        traffic = cfg.traffic
        child = pulumi.ResourceOptions(parent=self)
        labels = standard_labels(cfg, names.app, API, None)

        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=kube.metadata(names.app, args.namespace, labels),
            automount_service_account_token=False,
            opts=child,
        )
        after_migration = pulumi.ResourceOptions(parent=self, depends_on=[args.migration])
        # The release engine sets the image of a release (portalctl release start --image).
        skips = security.skips(security.unpinned(cfg.app.stable_image)) or None
        self.stable = k8s.apps.v1.Deployment(
            f"{name}-stable",
            metadata=kube.metadata(names.stable, args.namespace, labels, skips),
            spec=self._deployment_spec(args, "stable", cfg.app.replicas),
            opts=pulumi.ResourceOptions.merge(
                after_migration, pulumi.ResourceOptions(ignore_changes=list(STABLE_IGNORED))
            ),
        )
        self.canary = k8s.apps.v1.Deployment(
            f"{name}-canary",
            metadata=kube.metadata(names.canary, args.namespace, labels, skips),
            # No canary pods until a release starts; then the engine sets image and replicas.
            spec=self._deployment_spec(args, "canary", 0),
            opts=pulumi.ResourceOptions.merge(
                after_migration, pulumi.ResourceOptions(ignore_changes=list(CANARY_IGNORED))
            ),
        )

        self._route(name, args, labels)

        self.hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=kube.metadata(names.stable, args.namespace, labels),
            spec=_hpa_spec(cfg, self.stable.metadata.name),
            opts=child,
        )
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=kube.metadata(names.stable, args.namespace, labels),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                min_available=cfg.app.pdb_min_available,
                selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels=self.stable.spec.selector.match_labels
                ),
            ),
            opts=child,
        )

        scheme = "https" if traffic.tls_secret else "http"
        self.url = f"{scheme}://{traffic.host}"
        canary_ingress = self.canary_ingress.metadata.name if self.canary_ingress else None
        deployments = {"stableDeployment": self.stable.metadata.name}
        deployments["canaryDeployment"] = self.canary.metadata.name
        ingresses = {"ingress": self.ingress.metadata.name, "canaryIngress": canary_ingress}
        self.register_outputs({"url": self.url, **deployments, **ingresses})

    def _route(self, name: str, args: AppArgs, labels: dict[str, str]) -> None:
        """The Services and Ingresses of the traffic mode (the canary's own in ingress mode)."""
        cfg = args.config
        names = cfg.names
        traffic = cfg.traffic
        child = pulumi.ResourceOptions(parent=self)

        def service(
            role: str, service_name: str, match: pulumi.Input[dict[str, str]]
        ) -> k8s.core.v1.Service:
            return k8s.core.v1.Service(
                f"{name}-{role}-service",
                metadata=kube.metadata(service_name, args.namespace, labels),
                spec=k8s.core.v1.ServiceSpecArgs(
                    selector=match, ports=[kube.service_port("http", SERVICE_PORT, "http")]
                ),
                opts=child,
            )

        def ingress(
            role: str,
            ingress_name: str,
            backend: pulumi.Input[str],
            annotations: dict[str, pulumi.Input[str]] | None,
            ignore: tuple[str, ...] = (),
        ) -> k8s.networking.v1.Ingress:
            return k8s.networking.v1.Ingress(
                f"{name}-{role}",
                metadata=kube.metadata(ingress_name, args.namespace, labels, annotations),
                spec=_ingress_spec(cfg, backend),
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=list(ignore) or None),
            )

        if traffic.mode == "ingress":
            self.services = {
                "stable": service("stable", names.stable, self.stable.spec.selector.match_labels),
                "canary": service("canary", names.canary, self.canary.spec.selector.match_labels),
            }
            self.ingress = ingress(
                "ingress", names.ingress, self.services["stable"].metadata.name, None
            )
            self.canary_ingress = ingress(
                "canary-ingress",
                names.canary_ingress,
                self.services["canary"].metadata.name,
                {CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: "0"},
                CANARY_INGRESS_IGNORED,
            )
        else:
            self.services = {
                "shared": service("shared", names.app, selector(names.app, API)),
            }
            self.ingress = ingress(
                "ingress", names.ingress, self.services["shared"].metadata.name, None
            )
            self.canary_ingress = None

    def _deployment_spec(
        self, args: AppArgs, track: Track, replicas: int
    ) -> k8s.apps.v1.DeploymentSpecArgs:
        cfg = args.config
        app = cfg.app
        match = app_selector(cfg, track)
        return k8s.apps.v1.DeploymentSpecArgs(
            replicas=replicas,
            revision_history_limit=5,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
            strategy=k8s.apps.v1.DeploymentStrategyArgs(
                type="RollingUpdate",
                rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                    max_surge="25%", max_unavailable=0
                ),
            ),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    labels=pod_labels(cfg, track),
                    annotations={
                        SCRAPE_ANNOTATIONS["scrape"]: "true",
                        SCRAPE_ANNOTATIONS["port"]: str(app.port),
                        SCRAPE_ANNOTATIONS["path"]: APP_METRICS_PATH,
                    },
                ),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name=self.service_account.metadata.name,
                    automount_service_account_token=False,
                    enable_service_links=False,
                    security_context=kube.pod_security(ports.APP_UID),
                    termination_grace_period_seconds=30,
                    topology_spread_constraints=[
                        k8s.core.v1.TopologySpreadConstraintArgs(
                            max_skew=1,
                            topology_key="kubernetes.io/hostname",
                            when_unsatisfiable="ScheduleAnyway",
                            label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                        )
                    ],
                    containers=[self._container(args, track)],
                    volumes=[kube.empty_dir("tmp"), kube.secret_volume("env", args.env_secret)],
                ),
            ),
        )

    @staticmethod
    def _container(args: AppArgs, track: Track) -> k8s.core.v1.ContainerArgs:
        cfg = args.config
        app = cfg.app
        env = [
            k8s.core.v1.EnvVarArgs(
                name="PORTAL_VERSION",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(
                        field_path=f"metadata.labels['{VERSION}']"
                    ),
                ),
            ),
            kube.env("PORTAL_TRACK", track),
            kube.env("PORTAL_CACHE_TTL_SHORT", str(app.cache_ttl.short)),
            kube.env("PORTAL_CACHE_TTL_MEDIUM", str(app.cache_ttl.medium)),
            kube.env("PORTAL_CACHE_TTL_LONG", str(app.cache_ttl.long)),
            kube.env("PORTAL_SLOW_QUERY_MS", str(app.slow_query_ms)),
            kube.env("PORTAL_SLOW_REQUEST_MS", str(app.slow_request_ms)),
            kube.env("PORTAL_DB_POOL_SIZE", str(app.db_pool_size)),
            kube.env("PORTAL_TRACE_SAMPLE_RATIO", f"{app.trace_sample_ratio:g}"),
            kube.env("PORTAL_RESPONSE_HEADERS", "on" if app.response_headers else "off"),
            kube.env("PORTAL_DB_STATEMENT_TIMEOUT_MS", str(app.db_statement_timeout_ms)),
            kube.env("PORTAL_DB_LOCK_TIMEOUT_MS", str(app.db_lock_timeout_ms)),
            kube.env("OTEL_EXPORTER_OTLP_ENDPOINT", args.otlp_endpoint),
            kube.env("OTEL_SERVICE_NAME", cfg.names.app),
            kube.env(
                "OTEL_RESOURCE_ATTRIBUTES",
                f"deployment.environment={cfg.environment},service.version=$(PORTAL_VERSION),"
                f"portal.track={track}",
            ),
            # The Secret's keys are files; the service reads <KEY>_FILE.
            *(kube.env(f"{key}_FILE", f"{SECRETS_DIR}/{key}") for key in args.env_keys),
        ]
        return k8s.core.v1.ContainerArgs(
            name=cfg.names.container,
            image=app.stable_image,
            image_pull_policy=kube.pull_policy(app.stable_image),
            command=list(APP_COMMAND),
            args=["serve", "--host", "0.0.0.0", "--port", str(app.port)],  # noqa: S104 - in a pod
            ports=[kube.port("http", app.port)],
            env=env,
            resources=kube.resources(app.resources),
            startup_probe=kube.http_probe(LIVENESS_PATH, "http", period=2, failures=30),
            liveness_probe=kube.http_probe(LIVENESS_PATH, "http", period=10, failures=3),
            readiness_probe=kube.http_probe(
                READINESS_PATH, "http", period=5, failures=2, timeout=5
            ),
            security_context=kube.container_security(),
            volume_mounts=[
                kube.mount("tmp", "/tmp"),  # noqa: S108 - an emptyDir
                kube.mount("env", SECRETS_DIR, read_only=True),
            ],
        )


def _ingress_spec(
    cfg: StackConfig, backend: pulumi.Input[str]
) -> k8s.networking.v1.IngressSpecArgs:
    """The business routes (``/api/``) of the stack's host to the ``backend`` Service's http
    port. ``/metrics``, ``/docs`` and ``/openapi.json`` lie outside ``/api/``: only Prometheus,
    the probes and ``portalctl`` (through the API server's proxy) reach them, inside the cluster."""
    traffic = cfg.traffic
    tls = (
        [k8s.networking.v1.IngressTLSArgs(hosts=[traffic.host], secret_name=traffic.tls_secret)]
        if traffic.tls_secret
        else None
    )
    service = k8s.networking.v1.IngressServiceBackendArgs(
        name=backend, port=k8s.networking.v1.ServiceBackendPortArgs(name="http")
    )
    path = k8s.networking.v1.HTTPIngressPathArgs(
        path=PUBLIC_PREFIX,
        path_type="Prefix",
        backend=k8s.networking.v1.IngressBackendArgs(service=service),
    )
    rule = k8s.networking.v1.IngressRuleArgs(
        host=traffic.host, http=k8s.networking.v1.HTTPIngressRuleValueArgs(paths=[path])
    )
    return k8s.networking.v1.IngressSpecArgs(
        ingress_class_name=traffic.ingress_class, tls=tls, rules=[rule]
    )


def _hpa_spec(
    cfg: StackConfig, stable: pulumi.Input[str]
) -> k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs:
    """The stable Deployment between the configured bounds, on CPU."""
    return k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
        scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
            api_version="apps/v1",
            kind="Deployment",
            name=stable,
        ),
        min_replicas=cfg.app.hpa.min_replicas,
        max_replicas=cfg.app.hpa.max_replicas,
        metrics=[
            k8s.autoscaling.v2.MetricSpecArgs(
                type="Resource",
                resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                    name="cpu",
                    target=k8s.autoscaling.v2.MetricTargetArgs(
                        type="Utilization",
                        average_utilization=cfg.app.hpa.target_cpu_percent,
                    ),
                ),
            )
        ],
        behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
            scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(stabilization_window_seconds=300),
        ),
    )
