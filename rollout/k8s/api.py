"""The Kubernetes API as the backend's ports use it: errors in one line, Deployments read,
patched, scaled and waited on, and the kubeconfig's credentials for the service proxy."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from rollout.ports import TargetError
from rollout.telemetry import HttpAuth


def api_error(what: str, exc: ApiException) -> TargetError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.reason
    return TargetError(f"{what}: HTTP {exc.status}: {message}")


def kubeconfig_client(context: str | None = None) -> client.ApiClient:
    """An API client from the kubeconfig (its ``context``), or the in-cluster service account."""
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
    return client.ApiClient()


def http_auth(api_client: client.ApiClient) -> HttpAuth:
    """The kubeconfig's token and CA, for requests through the API server's service proxy."""
    conf = api_client.configuration
    headers: dict[str, str] = {}
    keys = conf.api_key or {}
    token = keys.get("authorization") or keys.get("BearerToken")
    if token:
        prefix = (conf.api_key_prefix or {}).get("authorization", "")
        headers["Authorization"] = f"{prefix} {token}".strip()
    context = None
    if str(conf.host).startswith("https"):
        context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
        if conf.cert_file:
            context.load_cert_chain(conf.cert_file, conf.key_file)
        if not conf.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return HttpAuth(headers, context)


def service_proxy(api_client: client.ApiClient, namespace: str, service: str, port: int) -> str:
    host = str(api_client.configuration.host).rstrip("/")
    return f"{host}/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy"


class Deployments:
    """Read, patch, scale and wait for the Deployments of one namespace."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        poll_s: float,
        timeout_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        # The generated clients' models are Optional all the way down; we read what the API
        # server guarantees, so they are used untyped here.
        self.apps: Any = client.AppsV1Api(api_client)
        self.namespace = namespace
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.sleep = sleep

    def read(self, name: str) -> Any:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as exc:
            raise api_error(f"reading Deployment {name}", exc) from exc

    def patch(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.apps.patch_namespaced_deployment(name, self.namespace, body)
        except ApiException as exc:
            raise api_error(f"patching Deployment {name}", exc) from exc

    def scale(self, name: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment_scale(
                name, self.namespace, {"spec": {"replicas": replicas}}
            )
        except ApiException as exc:
            raise api_error(f"scaling Deployment {name}", exc) from exc

    def replicas(self, name: str) -> int:
        return int(self.read(name).spec.replicas or 0)

    def wait_rollout(self, name: str) -> None:
        """Until the Deployment's new generation is observed, every replica runs the new template
        and is available, and no pod of an older one is left (what ``kubectl rollout status``
        waits for); a timeout, or the controller giving up (``ProgressDeadlineExceeded``), names
        what is missing."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            dep = self.read(name)
            want = int(dep.spec.replicas or 0)
            st = dep.status
            observed = (st.observed_generation or 0) >= (dep.metadata.generation or 0)
            total = int(st.replicas or 0)
            updated = int(st.updated_replicas or 0)
            ready = int(st.ready_replicas or 0)
            available = int(st.available_replicas or 0)
            old = max(0, total - updated)
            if observed and updated >= want and old == 0 and available >= want and ready >= want:
                return
            detail = (
                f"{ready}/{want} ready, {updated} updated, {available} available"
                + (f", {old} old pending termination" if old else "")
                + ("" if observed else ", new generation not yet observed")
            )
            stalled = next(
                (
                    c
                    for c in st.conditions or []
                    if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded"
                ),
                None,
            )
            if observed and stalled is not None:
                raise TargetError(
                    f"Deployment {name} stopped progressing: {stalled.message} ({detail})"
                )
            if time.monotonic() >= deadline:
                raise TargetError(
                    f"Deployment {name} did not roll out within {self.timeout_s:g}s: {detail}"
                )
            self.sleep(self.poll_s)
