"""The Kubernetes target: the release engine's hands on a cluster, through the API server only.

It patches the objects the Pulumi components created (names from the config model): the canary
Deployment's image, version label and replicas; the canary Ingress's ``canary-weight`` (or, in
``replicas`` traffic mode, the two Deployments' replica counts); the stable Deployment on
promotion. It waits for rollout status, probes each canary pod's health endpoint through the
pod proxy, runs each version's migrations as a Job, and keeps the ledger in a ConfigMap with
compare-and-swap on its resourceVersion. Prometheus is reached through the API server's service
proxy with the same credentials, so a laptop with a kubeconfig needs nothing else.
"""

from __future__ import annotations

import json
import math
import ssl
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import (
    CANARY_WEIGHT_ANNOTATION,
    LEDGER,
    MANAGED_BY,
    PORTALCTL,
    TRACK,
    VERSION,
    Track,
    app_selector,
    label_selector,
    selector,
)
from contract.migration import migration_job
from contract.names import NAMES
from rollout import health
from rollout.prometheus import Prometheus
from rollout.target import (
    ConflictError,
    HealthProbe,
    LedgerStore,
    MigrationResult,
    Phase,
    ReleaseSpec,
    TargetError,
    TargetState,
)

LEDGER_KEY = "ledger.json"


def _api_error(what: str, exc: ApiException) -> TargetError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.reason
    return TargetError(f"{what}: HTTP {exc.status}: {message}")


class ConfigMapLedgerStore:
    """The ledger in a ConfigMap; the token is its resourceVersion."""

    def __init__(self, core: Any, namespace: str, name: str) -> None:
        self.core = core
        self.namespace = namespace
        self.name = name

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            cm = self.core.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise _api_error(f"reading ConfigMap {self.name}", exc) from exc
        raw = (cm.data or {}).get(LEDGER_KEY)
        doc = json.loads(raw) if raw else None
        return doc, cm.metadata.resource_version

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        data = {LEDGER_KEY: json.dumps(doc, sort_keys=True)}
        labels = {**selector(NAMES.app, LEDGER), MANAGED_BY: PORTALCTL}
        try:
            if token is None:
                cm = self.core.create_namespaced_config_map(
                    self.namespace,
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": self.name, "labels": labels},
                        "data": data,
                    },
                )
            else:
                cm = self.core.replace_namespaced_config_map(
                    self.name,
                    self.namespace,
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": self.name, "labels": labels, "resourceVersion": token},
                        "data": data,
                    },
                )
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"ConfigMap {self.name} changed since it was read") from exc
            raise _api_error(f"writing ConfigMap {self.name}", exc) from exc
        return str(cm.metadata.resource_version)


class KubernetesTarget:
    def __init__(
        self,
        cfg: StackConfig,
        api_client: client.ApiClient,
        *,
        poll_s: float = 2.0,
        timeout_s: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        prometheus_url: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.names = cfg.names
        self.namespace = cfg.namespace
        self.api_client = api_client
        # The generated clients' models are Optional all the way down; we read what the API
        # server guarantees, so they are used untyped here.
        self.apps: Any = client.AppsV1Api(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.batch: Any = client.BatchV1Api(api_client)
        self.net: Any = client.NetworkingV1Api(api_client)
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        host = api_client.configuration.host.rstrip("/")
        self._prometheus_url = prometheus_url or (
            f"{host}/api/v1/namespaces/{self.namespace}/services/"
            f"{self.names.prometheus}:{self.names.prometheus_port}/proxy"
        )

    @classmethod
    def from_kubeconfig(
        cls, cfg: StackConfig, context: str | None = None, **kw: Any
    ) -> KubernetesTarget:
        try:
            config.load_kube_config(context=context)  # type: ignore[no-untyped-call]
        except Exception as kube_exc:  # the client raises several kinds; all mean "no config"
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                raise TargetError(
                    f"no Kubernetes credentials: {kube_exc} (set KUBECONFIG or "
                    "~/.kube/config, or pass --context)"
                ) from None
        return cls(cfg, client.ApiClient(), **kw)

    # ----------------------------------------------------------------------- basics

    @property
    def name(self) -> str:
        return f"kubernetes:{self.namespace}"

    @property
    def prometheus_url(self) -> str:
        return self._prometheus_url

    @property
    def pushgateway_url(self) -> str:
        """The Pushgateway through the API server's service proxy (release events)."""
        host = self.api_client.configuration.host.rstrip("/")
        return (
            f"{host}/api/v1/namespaces/{self.namespace}/services/"
            f"{self.names.pushgateway}:{self.names.pushgateway_port}/proxy"
        )

    def prometheus(self) -> Prometheus:
        """A Prometheus client with the kubeconfig's credentials (for the service proxy)."""
        conf = self.api_client.configuration
        headers: dict[str, str] = {}
        token = (conf.api_key or {}).get("authorization") or (conf.api_key or {}).get("BearerToken")
        if token:
            prefix = (conf.api_key_prefix or {}).get("authorization", "")
            headers["Authorization"] = f"{prefix} {token}".strip()
        context = None
        if self._prometheus_url.startswith("https"):
            context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
            if conf.cert_file:
                context.load_cert_chain(conf.cert_file, conf.key_file)
            if not conf.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return Prometheus(self._prometheus_url, headers=headers, ssl_context=context)

    def ledger(self) -> LedgerStore:
        return ConfigMapLedgerStore(self.core, self.namespace, self.names.ledger)

    def _deployment(self, name: str) -> Any:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as exc:
            raise _api_error(f"reading Deployment {name}", exc) from exc

    def _patch_deployment(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.apps.patch_namespaced_deployment(name, self.namespace, body)
        except ApiException as exc:
            raise _api_error(f"patching Deployment {name}", exc) from exc

    @staticmethod
    def _image_of(dep: Any, container: str) -> str | None:
        for c in dep.spec.template.spec.containers:
            if c.name == container:
                return str(c.image)
        return None

    def state(self) -> TargetState:
        stable = self._deployment(self.names.stable)
        canary = self._deployment(self.names.canary)
        stable_labels = stable.spec.template.metadata.labels or {}
        canary_labels = canary.spec.template.metadata.labels or {}
        return TargetState(
            stable_version=str(stable_labels.get(VERSION, "")),
            stable_image=self._image_of(stable, self.names.container),
            canary_version=canary_labels.get(VERSION),
            canary_image=self._image_of(canary, self.names.container),
            canary_replicas=int(canary.spec.replicas or 0),
            canary_ready_replicas=int((canary.status and canary.status.ready_replicas) or 0),
            weight=self._weight(int(stable.spec.replicas or 0), int(canary.spec.replicas or 0)),
        )

    def _weight(self, stable: int, canary: int) -> int:
        """The canary's share: the Ingress annotation, or in replicas mode the pod ratio."""
        if self.cfg.traffic.mode == "replicas":
            return round(100 * canary / (canary + stable)) if canary + stable else 0
        try:
            ing = self.net.read_namespaced_ingress(self.names.canary_ingress, self.namespace)
        except ApiException as exc:
            raise _api_error(f"reading Ingress {self.names.canary_ingress}", exc) from exc
        return int((ing.metadata.annotations or {}).get(CANARY_WEIGHT_ANNOTATION, "0"))

    # ----------------------------------------------------------------------- rollout

    def wait_rollout(self, name: str) -> None:
        """Until the Deployment's new generation is observed and every replica is updated,
        ready and available; a timeout names what is missing."""
        deadline = time.monotonic() + self.timeout_s
        detail = "no status yet"
        while True:
            dep = self._deployment(name)
            want = int(dep.spec.replicas or 0)
            st = dep.status
            observed = (st.observed_generation or 0) >= (dep.metadata.generation or 0)
            updated = int(st.updated_replicas or 0)
            ready = int(st.ready_replicas or 0)
            available = int(st.available_replicas or 0)
            if observed and updated >= want and ready >= want and available >= want:
                return
            detail = f"{ready}/{want} ready, {updated} updated, {available} available" + (
                "" if observed else ", new generation not yet observed"
            )
            if time.monotonic() >= deadline:
                raise TargetError(
                    f"Deployment {name} did not roll out within {self.timeout_s:g}s: {detail}"
                )
            self.sleep(self.poll_s)

    def _version_patch(self, spec_image: str, version: str, replicas: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "spec": {
                "template": {
                    "metadata": {"labels": {VERSION: version}},
                    "spec": {"containers": [{"name": self.names.container, "image": spec_image}]},
                }
            }
        }
        if replicas is not None:
            body["spec"]["replicas"] = replicas
        return body

    def deploy_canary(self, spec: ReleaseSpec, replicas: int) -> None:
        if not spec.image:
            raise TargetError("a cluster release needs an image (--image repo/name:tag)")
        self._patch_deployment(
            self.names.canary, self._version_patch(spec.image, spec.version, replicas)
        )
        self.wait_rollout(self.names.canary)

    def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise TargetError(f"weight {weight} is not a percentage (0..100)")
        if self.cfg.traffic.mode == "replicas":
            total = self.cfg.app.replicas
            canary = (
                max(1, math.ceil(total * weight / 100))
                if weight
                else max(1, int(self._deployment(self.names.canary).spec.replicas or 1))
            )
            stable = total if weight == 0 else max(1, total - canary)
            self.scale(self.names.canary, canary)
            self.scale(self.names.stable, stable)
            self.wait_rollout(self.names.canary)
            self.wait_rollout(self.names.stable)
            return
        try:
            self.net.patch_namespaced_ingress(
                self.names.canary_ingress,
                self.namespace,
                {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: str(weight)}}},
            )
        except ApiException as exc:
            raise _api_error(f"patching Ingress {self.names.canary_ingress}", exc) from exc

    def probe_canary(self) -> list[HealthProbe]:
        probes = []
        for pod in self.pods(track="canary"):
            name = pod["name"]
            try:
                resp = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{name}:{self.cfg.app.port}",
                    self.namespace,
                    "api/health/advanced",
                    _preload_content=False,
                )
                code, raw = resp.status, resp.data
            except ApiException as exc:
                code, raw = exc.status, (exc.body or "").encode()
            probes.append(health.from_response(name, int(code), raw))
        return probes

    def promote(self, spec: ReleaseSpec) -> None:
        if not spec.image:
            raise TargetError("a cluster release needs an image")
        self.set_stable(spec.version, spec.image)
        self.rollback()

    def rollback(self) -> None:
        if self.cfg.traffic.mode == "replicas":
            self.scale(self.names.stable, self.cfg.app.replicas)
        else:
            self.set_weight(0)
        self.scale(self.names.canary, 0)

    def set_stable(self, version: str, image: str | None) -> None:
        if not image:
            raise TargetError(
                f"no image recorded for {version}; roll back with --to a release that has one"
            )
        self._patch_deployment(self.names.stable, self._version_patch(image, version, None))
        self.wait_rollout(self.names.stable)

    # ----------------------------------------------------------------------- migrations

    def run_migrations(self, spec: ReleaseSpec, phase: Phase) -> MigrationResult:
        if not spec.image:
            raise TargetError("a cluster release needs an image to run its migrations")
        name = self.names.migration_job(spec.version, phase)
        try:
            self.batch.create_namespaced_job(
                self.namespace,
                migration_job(self.cfg, spec.version, spec.image, phase, managed_by=PORTALCTL),
            )
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: this version's Job ran (or runs): wait on it
                raise _api_error(f"creating Job {name}", exc) from exc
        deadline = time.monotonic() + self.timeout_s
        while True:
            status = self.job_status(name) or {}
            if status.get("succeeded"):
                return MigrationResult(phase, True, self._applied(name), f"Job {name} succeeded")
            if status.get("failed_condition"):
                return MigrationResult(
                    phase, False, self._applied(name), f"Job {name} failed: {status.get('message')}"
                )
            if time.monotonic() >= deadline:
                return MigrationResult(
                    phase, False, (), f"Job {name} still running after {self.timeout_s:g}s"
                )
            self.sleep(self.poll_s)

    def _applied(self, job: str) -> tuple[str, ...]:
        """What the runner printed (``--json``) in the Job's pod log, when it can be read."""
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job}")
            for pod in pods.items:
                log = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace)
                for line in reversed(str(log).splitlines()):
                    if line.startswith("{"):
                        return tuple(json.loads(line).get("applied") or ())
        except (ApiException, ValueError):
            pass
        return ()

    # ----------------------------------------------------------------------- reads (runbooks)

    def pods(self, track: Track | None = None) -> list[dict[str, Any]]:
        selector = label_selector(app_selector(self.cfg, track))
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        except ApiException as exc:
            raise _api_error("listing pods", exc) from exc
        out = []
        for pod in pods.items:
            labels = pod.metadata.labels or {}
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            restarts: int = sum(
                int(s.restart_count or 0) for s in (pod.status.container_statuses or [])
            )
            out.append(
                {
                    "name": pod.metadata.name,
                    "track": labels.get(TRACK),
                    "version": labels.get(VERSION),
                    "phase": pod.status.phase,
                    "ready": conditions.get("Ready") == "True",
                    "restarts": restarts,
                }
            )
        return out

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        try:
            events = self.core.list_namespaced_event(self.namespace, limit=limit)
        except ApiException as exc:
            raise _api_error("listing events", exc) from exc
        return [
            {
                "type": e.type,
                "reason": e.reason,
                "message": e.message,
                "object": f"{e.involved_object.kind}/{e.involved_object.name}",
            }
            for e in events.items
        ][-limit:]

    def job_status(self, name: str) -> dict[str, Any] | None:
        try:
            job = self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(f"reading Job {name}", exc) from exc
        st = job.status
        failed = next(
            (c for c in (st.conditions or []) if c.type == "Failed" and c.status == "True"), None
        )
        return {
            "name": name,
            "active": int(st.active or 0),
            "succeeded": int(st.succeeded or 0),
            "failed": int(st.failed or 0),
            "failed_condition": failed is not None,
            "condition": failed.reason if failed else None,
            "message": failed.message if failed else None,
        }

    def scale(self, deployment: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment_scale(
                deployment, self.namespace, {"spec": {"replicas": replicas}}
            )
        except ApiException as exc:
            raise _api_error(f"scaling Deployment {deployment}", exc) from exc
