"""What the runbooks read on a cluster: the app's pods (and their health through the pod
proxy), recent events, Jobs; and where the database analysis reaches Postgres from here."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import TRACK, VERSION, Track, app_selector, label_selector
from contract.names import DATABASE_URL
from rollout import health
from rollout.k8s.api import TRANSPORT_ERRORS, TimedApi, api_error, timed_out, unreachable
from rollout.k8s.migrator import Jobs
from rollout.ports import (
    ClusterEvent,
    HealthProbe,
    Instance,
    JobStatus,
    TargetUnreachable,
    Unavailable,
)

PROBE_TIMEOUT_S = (5.0, 5.0)
"""(connect, read) of one pod's health probe through the API server."""
API_REFUSALS = frozenset({401, 403, 429})
"""Answers of the API server itself through the pod proxy (credentials refused, RBAC, rate
limit): the app's health endpoint never gives them."""
PROBE_ERRORS: tuple[type[BaseException], ...] = (TargetUnreachable, *TRANSPORT_ERRORS)


class KubeDiagnostics:
    def __init__(self, cfg: StackConfig, api_client: client.ApiClient, jobs: Jobs) -> None:
        self.cfg = cfg
        self.namespace = cfg.namespace
        self.core: Any = TimedApi(client.CoreV1Api(api_client))
        self.host = str(api_client.configuration.host)
        self.jobs = jobs

    def _pods(self, track: Track | None) -> list[Any]:
        selector = label_selector(app_selector(self.cfg, track))
        try:
            return list(
                self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
            )
        except ApiException as exc:
            raise api_error("listing pods", exc) from exc

    def instances(self) -> list[Instance]:
        out = []
        for pod in self._pods(None):
            labels = pod.metadata.labels or {}
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            ready = conditions.get("Ready") == "True"
            restarts = sum(int(s.restart_count or 0) for s in (pod.status.container_statuses or []))
            out.append(
                Instance(
                    name=pod.metadata.name,
                    track=labels.get(TRACK),
                    version=labels.get(VERSION),
                    ready=ready,
                    detail=f"phase {pod.status.phase}, ready {ready}, restarts {restarts}",
                    restarts=restarts,
                )
            )
        return out

    def probe(self, track: Track | None = None) -> list[HealthProbe]:
        """``/api/health/advanced`` of each pod, through the API server's pod proxy. A pod that
        does not answer within ``PROBE_TIMEOUT_S`` failed its probe; an API server that does
        not answer, or refuses the request itself (``API_REFUSALS``), is a ``TargetError``
        (``TargetUnreachable`` when it may pass), never the pod's verdict."""
        probes = []
        for pod in self._pods(track):
            name = pod.metadata.name
            pod_track = (pod.metadata.labels or {}).get(TRACK)
            try:
                resp = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{name}:{self.cfg.app.port}",
                    self.namespace,
                    "api/health/advanced",
                    _preload_content=False,
                    _request_timeout=PROBE_TIMEOUT_S,
                )
                try:
                    code, raw = resp.status, resp.data
                finally:
                    resp.release_conn()
            except ApiException as exc:
                if exc.status in API_REFUSALS:
                    raise api_error(f"probing pod {name}", exc) from exc
                code, raw = exc.status, (exc.body or "").encode()
            except PROBE_ERRORS as exc:
                if not timed_out(exc):
                    if isinstance(exc, TargetUnreachable):
                        raise
                    raise unreachable(f"probing pod {name}", self.host, exc) from exc
                self._api_server_answers(name)
                detail = f"no answer within {PROBE_TIMEOUT_S[1]:g}s through the pod proxy"
                probes.append(HealthProbe(name, False, None, None, detail, pod_track))
                continue
            probes.append(health.from_response(name, int(code), raw, pod_track))
        return probes

    def _api_server_answers(self, pod: str) -> None:
        """After a probe of ``pod`` timed out: ``TargetUnreachable`` unless the API server itself
        answers (asked for the pod, within the probe's timeout), so a stopped API server is not
        taken for a pod that does not answer."""
        try:
            self.core.read_namespaced_pod(pod, self.namespace, _request_timeout=PROBE_TIMEOUT_S)
        except ApiException:
            return  # it answered

    def events(self, limit: int) -> list[ClusterEvent] | Unavailable:
        try:
            events = self.core.list_namespaced_event(self.namespace, limit=limit)
        except ApiException as exc:
            raise api_error("listing events", exc) from exc
        return [
            ClusterEvent(
                type=str(e.type),
                reason=str(e.reason),
                message=str(e.message),
                object=f"{e.involved_object.kind}/{e.involved_object.name}",
            )
            for e in events.items
        ][-limit:]

    def job(self, name: str) -> JobStatus | Unavailable | None:
        return self.jobs.status(name)

    def database_url(self) -> str | Unavailable:
        dsn = os.environ.get(DATABASE_URL)
        if dsn:
            return dsn
        return Unavailable(
            f"set {DATABASE_URL} to the database (e.g. through `kubectl port-forward`) to run it"
        )

    def restart_hint(self) -> str | None:
        return None


def admin_unavailable(cfg: StackConfig) -> Unavailable:
    """The service's admin endpoints are not called on a cluster (that takes the token keys of
    the app Secret and create on pods/proxy): the runbooks say what to run instead."""
    return Unavailable(
        "the Kubernetes target does not call the app's admin endpoints (POST /api/admin/... on "
        "each pod with a token of the admin scope: `python -m app token mint --service NAME "
        f"--scope admin --keys-file F`, F holding key PORTAL_AUTH_KEYS of Secret "
        f"{cfg.names.app_secret})"
    )
