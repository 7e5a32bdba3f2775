"""The Kubernetes API as the backend's ports use it: errors in one line, Deployments read,
patched, scaled and waited on, and the kubeconfig's credentials for the service proxy."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from rollout.http import HttpAuth
from rollout.ports import TargetError, TargetUnreachable

REQUEST_TIMEOUT_S = (5.0, 30.0)
"""Every API call's (connect, read) timeout: a server that stops answering is a
``TargetUnreachable`` after at most this long, never a hang."""

RETRYABLE_STATUS = frozenset({401, 408, 429, 500, 502, 503, 504})
"""Answers that may change by themselves: the server overloaded or restarting, or credentials
it rejected (an exec, OIDC or token-file credential is refreshed before the next call)."""


def api_error(what: str, exc: ApiException) -> TargetError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    if exc.status == 0:  # the client's own transport failure (TLS...)
        return TargetUnreachable(f"{what}: the API server did not answer: {message}")
    kind = TargetUnreachable if exc.status in RETRYABLE_STATUS else TargetError
    return kind(f"{what}: HTTP {exc.status}: {message}")


def unreachable(what: str, host: str, exc: BaseException) -> TargetUnreachable:
    """A transport failure (refused, reset, timed out...) in one line."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).split(": ", 1)[-1] if isinstance(reason, Exception) else str(reason)
    text = " ".join(text.split())[:200]
    return TargetUnreachable(f"{what}: the API server at {host} did not answer ({text})")


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)
"""What the kubernetes client lets through when the connection fails (urllib3's errors: a
refused or reset connection, a read timeout, a broken response; socket errors)."""

RETRIES = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0, backoff_factor=0.2)
"""A refused connection is tried again at once (a restarting server); a read that timed out is
not (the timeout already waited), so one call fails within its timeout."""


def timed_out(exc: BaseException) -> bool:
    """Whether a transport failure (or the ``TargetUnreachable`` made of one) was a timeout."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        reason = getattr(seen, "reason", None)
        seen = reason if isinstance(reason, BaseException) else seen.__cause__
    return False


def harden(
    api_client: client.ApiClient, timeout: tuple[float, float] = REQUEST_TIMEOUT_S
) -> client.ApiClient:
    """``api_client`` with ``RETRIES`` instead of urllib3's default (which retries a timed-out
    read three times, so one call to a stopped server would hang for four timeouts), and
    ``timeout`` for every call ``TimedApi`` makes through it."""
    api_client.configuration.retries = RETRIES
    api_client.rest_client = rest.RESTClientObject(api_client.configuration)
    setattr(api_client, "portal_request_timeout", timeout)  # noqa: B010 - ours, on its object
    return api_client


def request_timeout(api_client: client.ApiClient) -> tuple[float, float]:
    timeout: tuple[float, float] = getattr(api_client, "portal_request_timeout", REQUEST_TIMEOUT_S)
    return timeout


class TimedApi:
    """One of the client's API groups (``CoreV1Api``...) whose every call carries a timeout and
    raises ``ApiException`` or ``TargetUnreachable``, never a transport error."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self._timeout = request_timeout(api.api_client)
        self._host = str(api.api_client.configuration.host)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("_request_timeout", self._timeout)
            try:
                return method(*args, **kwargs)
            except ApiException as exc:
                if exc.status == 0:  # the client's own word for a failed connection (TLS)
                    raise unreachable(name, self._host, exc) from exc
                raise
            except TRANSPORT_ERRORS as exc:
                raise unreachable(name, self._host, exc) from exc

        return call


def kubeconfig_client(context: str | None = None) -> client.ApiClient:
    """An API client from the kubeconfig (its ``context``), or the in-cluster service account.

    Its credentials stay refreshable: the kubernetes client re-runs an exec plugin or refreshes
    an OIDC token when it expires (and re-reads the in-cluster token every minute); a kubeconfig
    ``tokenFile`` is re-read whenever the file changes (the client itself reads it once)."""
    conf = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG") or None,  # as it is now, not at import
            context=context,
            client_configuration=conf,
        )
    except Exception as kube_exc:  # the client raises several kinds; all mean "no config"
        try:
            config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            raise TargetError(
                f"no Kubernetes credentials: {kube_exc} (set KUBECONFIG or "
                "~/.kube/config, or pass --context)"
            ) from None
    else:
        token_file = kubeconfig_token_file(context)
        if token_file is not None:
            follow_token_file(conf, token_file)
    conf.retries = RETRIES
    return client.ApiClient(conf)


def kubeconfig_token_file(context: str | None = None) -> Path | None:
    """The ``tokenFile`` of the context's user in the kubeconfig, if it names one."""
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or [
        os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION)
    ]
    docs = []
    for path in paths:
        with contextlib.suppress(OSError, yaml.YAMLError):
            doc = yaml.safe_load(Path(path).read_text())
            if isinstance(doc, dict):
                docs.append((Path(path), doc))
    contexts = [d["current-context"] for _, d in docs if d.get("current-context")]
    current = context or (contexts[0] if contexts else None)

    def named(kind: str, name: Any) -> tuple[Path, dict[str, Any]] | None:
        for path, doc in docs:
            for entry in doc.get(kind) or []:
                if isinstance(entry, dict) and entry.get("name") == name:
                    return path, entry.get(kind[:-1]) or {}
        return None

    found = named("contexts", current)
    user = named("users", found[1].get("user")) if found else None
    if user is None or not user[1].get("tokenFile"):
        return None
    return user[0].parent / str(user[1]["tokenFile"])


def follow_token_file(conf: client.Configuration, path: Path) -> None:
    """Every request's token comes from ``path`` as it is now (re-read when it changes)."""
    previous = conf.refresh_api_key_hook
    seen: dict[str, Any] = {}

    def refresh(c: client.Configuration) -> None:
        if previous is not None:
            previous(c)  # the client's own refresh, which installs itself again: undo that
            setattr(c, "refresh_api_key_hook", refresh)  # noqa: B010 - typed None in the client
        with contextlib.suppress(OSError):
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen.get("stamp") != stamp:
                seen["stamp"], seen["token"] = stamp, path.read_text().strip()
        if seen.get("token"):
            c.api_key["BearerToken"] = f"Bearer {seen['token']}"

    setattr(conf, "refresh_api_key_hook", refresh)  # noqa: B010 - typed None in the client


def http_auth(api_client: client.ApiClient) -> HttpAuth:
    """The client's credentials and CA for requests through the API server's service proxy.
    The token is asked of the client's configuration at every request, so whatever refreshes
    it for the API calls (exec, OIDC, a token file) refreshes it here too."""
    conf = api_client.configuration

    def headers() -> dict[str, str]:
        bearer = conf.auth_settings().get("BearerToken")
        return {"Authorization": str(bearer["value"])} if bearer and bearer["value"] else {}

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
        self.apps: Any = TimedApi(client.AppsV1Api(api_client))
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
