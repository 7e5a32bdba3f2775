"""The Prometheus configuration of a stack, generated from the config model.

A pure function of the config (no Pulumi import): the observability component deploys its output,
and the local stack and the tests render the same configuration with loopback targets. The scrape
job names are defined here once; the alert rules match on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from contract import ports
from contract.config import StackConfig
from contract.labels import API, COMPONENT, NAME
from contract.names import SCRAPE_TOKEN_KEY

JOB_APP = "portal"
JOB_POSTGRES = "postgres"
JOB_REDIS = "redis"
JOB_PUSHGATEWAY = "pushgateway"
JOB_KUBE_STATE_METRICS = "kube-state-metrics"
JOB_PROMETHEUS = "prometheus"
JOB_ALERTMANAGER = "alertmanager"

RULES_FILE = "alerts.yml"
"""The rule file, next to ``prometheus.yml`` (Prometheus resolves it relative to the config)."""


APP_METRICS_PATH = "/metrics"
SCRAPE_TOKEN_DIR = "/var/run/secrets/prometheus-scrape"  # noqa: S105 - a directory
"""Where the Prometheus pod mounts the scrape Secret; it presents the token in it to the app."""
SCRAPE_ANNOTATIONS = {
    "scrape": "prometheus.io/scrape",
    "port": "prometheus.io/port",
    "path": "prometheus.io/path",
}
"""Pod annotations that mark an app pod for scraping (kubernetes_sd keeps only those)."""


@dataclass(frozen=True)
class Targets:
    """Where Prometheus finds what it scrapes (``host:port`` each)."""

    prometheus: str
    postgres_exporter: str
    redis_exporter: str
    pushgateway: str
    kube_state_metrics: str | None
    """``None`` where there is no Kubernetes API (the local stack)."""
    app: tuple[str, ...] | None = None
    """Static app instances; ``None`` discovers the app's pods in the stack's namespace."""
    app_credentials_file: str | None = None
    """The bearer token file Prometheus presents to the app (``/metrics`` is not public)."""
    alertmanager: str | None = None
    """Where Prometheus sends its alerts (and scrapes Alertmanager's own metrics)."""


def kubernetes_targets(cfg: StackConfig) -> Targets:
    """The in-cluster targets: Services in the stack's namespace, app pods by discovery."""
    n = cfg.names
    return Targets(
        prometheus=f"localhost:{n.prometheus_port}",
        postgres_exporter=f"{n.postgres}:{ports.POSTGRES_EXPORTER}",
        redis_exporter=f"{n.redis}:{ports.REDIS_EXPORTER}",
        pushgateway=f"{n.pushgateway}:{n.pushgateway_port}",
        kube_state_metrics=f"{n.kube_state_metrics}:{ports.KUBE_STATE_METRICS}",
        app=None,
        app_credentials_file=f"{SCRAPE_TOKEN_DIR}/{SCRAPE_TOKEN_KEY}",
        alertmanager=f"{n.alertmanager}:{n.alertmanager_port}",
    )


def prometheus_duration(seconds: float) -> str:
    """A Prometheus duration string: whole seconds as ``15s``, anything finer in ``ms``."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _label(name: str) -> str:
    """The kubernetes_sd meta label name of a pod label or annotation key."""
    return "".join(c if c.isalnum() else "_" for c in name)


def _app_discovery(cfg: StackConfig) -> dict[str, Any]:
    pod_label = "__meta_kubernetes_pod_label_"
    annotation = "__meta_kubernetes_pod_annotation_"
    return {
        "kubernetes_sd_configs": [
            {"role": "pod", "namespaces": {"names": [cfg.namespace]}},
        ],
        "relabel_configs": [
            {
                "source_labels": [
                    pod_label + _label(NAME),
                    pod_label + _label(COMPONENT),
                ],
                "regex": f"{cfg.names.app};{API}",
                "action": "keep",
            },
            {
                "source_labels": [annotation + _label(SCRAPE_ANNOTATIONS["scrape"])],
                "regex": "true",
                "action": "keep",
            },
            {
                # One target per pod: the container port named http (the app serves /metrics).
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": "http",
                "action": "keep",
            },
            {
                "source_labels": [annotation + _label(SCRAPE_ANNOTATIONS["path"])],
                "regex": "(.+)",
                "target_label": "__metrics_path__",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


def build(
    cfg: StackConfig,
    targets: Targets,
    rule_files: Sequence[str] = (RULES_FILE,),
    scrape_interval_s: float | None = None,
) -> dict[str, Any]:
    """The configuration as a mapping (``prometheus.yml``)."""
    interval = prometheus_duration(
        cfg.observability.scrape_interval_s if scrape_interval_s is None else scrape_interval_s
    )

    def static(job: str, target: str, **extra: Any) -> dict[str, Any]:
        return {"job_name": job, **extra, "static_configs": [{"targets": [target]}]}

    app: dict[str, Any] = {"job_name": JOB_APP, "metrics_path": APP_METRICS_PATH}
    if targets.app_credentials_file is not None:
        app["authorization"] = {"type": "Bearer", "credentials_file": targets.app_credentials_file}
    if targets.app is None:
        app.update(_app_discovery(cfg))
    else:
        app["static_configs"] = [{"targets": list(targets.app)}]

    jobs = [
        static(JOB_PROMETHEUS, targets.prometheus),
        app,
        static(JOB_POSTGRES, targets.postgres_exporter),
        static(JOB_REDIS, targets.redis_exporter),
        # portalctl pushes release events with their own labels (stack, release, version).
        static(JOB_PUSHGATEWAY, targets.pushgateway, honor_labels=True),
    ]
    if targets.kube_state_metrics is not None:
        jobs.append(static(JOB_KUBE_STATE_METRICS, targets.kube_state_metrics))
    conf: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            # on every alert: Alertmanager groups by namespace, silences match the stack
            "external_labels": {
                "stack": cfg.stack,
                "environment": cfg.environment,
                "namespace": cfg.namespace,
            },
        },
        "rule_files": list(rule_files),
        "scrape_configs": jobs,
    }
    if targets.alertmanager is not None:
        jobs.append(static(JOB_ALERTMANAGER, targets.alertmanager))
        conf["alerting"] = {
            "alertmanagers": [
                {"api_version": "v2", "static_configs": [{"targets": [targets.alertmanager]}]}
            ]
        }
    return conf


def render(
    cfg: StackConfig,
    targets: Targets,
    rule_files: Sequence[str] = (RULES_FILE,),
    scrape_interval_s: float | None = None,
) -> str:
    """``prometheus.yml`` as text."""
    return yaml.safe_dump(build(cfg, targets, rule_files, scrape_interval_s), sort_keys=False)
