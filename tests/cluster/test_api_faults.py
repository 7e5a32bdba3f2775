"""The Kubernetes target against a real kube-apiserver that misbehaves: stopped (SIGSTOP: it
accepts connections and never answers), gone (connection refused), resetting connections, and
credentials that stop being valid while ``portalctl`` runs. Every call returns within its
timeout as a ``TargetUnreachable`` (never a hang, never a urllib3 traceback), and a token file
the operator rotates is what the next call, and the next Prometheus query through the service
proxy, sends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import parse_config, read_stack_values
from rollout.k8s import kubernetes_target
from rollout.k8s.api import http_auth, kubeconfig_client, service_proxy
from rollout.ledger import Ledger
from rollout.ports import Target, TargetUnreachable
from rollout.prometheus import Prometheus, PrometheusError
from tests.cluster.conftest import wait_for
from tests.conftest import REPO

NAMESPACE = "portal-api-faults"
TIMEOUT = (2.0, 2.0)


def config(namespace: str = NAMESPACE):
    values = read_stack_values(REPO / "Pulumi.staging.yaml")
    values["namespace"] = namespace
    return parse_config(values, "staging")


@pytest.fixture(scope="module")
def namespace(kube: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    yield NAMESPACE
    with contextlib.suppress(ApiException):
        core.delete_namespace(NAMESPACE)


def api_server_pid(control_plane: Any) -> int:
    return int(next(c.pid for c in control_plane.components if c.name == "kube-apiserver"))


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (it keeps its listening socket: connections are accepted by the
    kernel and never answered), then continued."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def every_port_call(target: Target) -> dict[str, Any]:
    """One call of each port the engine uses on a cluster."""
    return {
        "workloads.state": target.workloads.state,
        "router.set_weight": lambda: target.router.set_weight(10),
        "diagnostics.probe": lambda: target.diagnostics.probe("canary"),
        "diagnostics.job": lambda: target.diagnostics.job("portal-migrate-9-9-9"),
        "ledger.load": target.ledger.load,
        "ledger.save": lambda: target.ledger.save({}, None),
        "ledger.archive": lambda: target.ledger.archive("r", {}),
    }


def test_every_call_returns_within_its_timeout_when_the_api_server_stops_answering(
    control_plane, kube, namespace
):
    cfg = config()
    target = kubernetes_target(cfg, kubeconfig_api(control_plane), request_timeout_s=TIMEOUT)
    Ledger(target.ledger, cfg.stack, target.name).update(lambda d: None)  # it works before
    with frozen(api_server_pid(control_plane)):
        for name, call in every_port_call(target).items():
            started = time.monotonic()
            with pytest.raises(TargetUnreachable) as info:
                call()
            took = time.monotonic() - started
            assert "did not answer" in str(info.value), name
            assert "timed out" in str(info.value).lower(), (name, str(info.value))
            # one timeout, not urllib3's default of four attempts (generous for a loaded host)
            assert took < 4 * sum(TIMEOUT), (name, took)
    wait_for("the API server answering again", lambda: target.ledger.load()[1] is not None)


def kubeconfig_api(control_plane: Any) -> client.ApiClient:
    os.environ["KUBECONFIG"] = control_plane.kubeconfig
    try:
        return kubeconfig_client()
    finally:
        del os.environ["KUBECONFIG"]


class Resetter:
    """A TCP listener that resets every connection as soon as it is accepted: what a load
    balancer dropping the API server's connections looks like to the client."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("fault", ["refused", "reset"])
def test_transport_errors_are_target_unreachable_naming_the_server(control_plane, fault):
    cfg = config()
    resetter = Resetter() if fault == "reset" else None
    port = resetter.port if resetter else _closed_port()
    conf = client.Configuration(host=f"https://127.0.0.1:{port}")
    conf.ssl_ca_cert = control_plane.ca
    try:
        target = kubernetes_target(cfg, client.ApiClient(conf), request_timeout_s=TIMEOUT)
        for name, call in every_port_call(target).items():
            with pytest.raises(TargetUnreachable, match=f"127.0.0.1:{port}") as info:
                call()
            assert "did not answer" in str(info.value), name
    finally:
        if resetter:
            resetter.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ credentials


ROLE_NAME = "portalctl-ledger"
ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": ROLE_NAME},
    "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
        {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]},
    ],
}


def bound_token(core: client.CoreV1Api, secret: str) -> str:
    """A ServiceAccount token bound to Secret ``secret``: valid until that Secret is deleted
    (TokenRequest's shortest expiry is 10 minutes; a bound object ends it at once)."""
    created = core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": secret}})
    request = {
        "spec": {
            "audiences": [],
            "expirationSeconds": 600,
            "boundObjectRef": {
                "kind": "Secret",
                "apiVersion": "v1",
                "name": secret,
                "uid": created.metadata.uid,
            },
        }
    }
    return str(
        core.create_namespaced_service_account_token("portalctl", NAMESPACE, request).status.token
    )


ACCOUNT = {"metadata": {"name": "portalctl"}}
BINDING = {
    "metadata": {"name": "portalctl-ledger"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_NAME},
    "subjects": [{"kind": "ServiceAccount", "name": "portalctl", "namespace": NAMESPACE}],
}
SERVICE = {
    "metadata": {"name": "prometheus"},
    "spec": {"ports": [{"port": 9090}], "selector": {"portal.test/none": "none"}},
}


def make_account(kube: client.ApiClient) -> None:
    """ServiceAccount ``portalctl`` with the ledger's RBAC, and a Service with no endpoints to
    reach through the service proxy (authorized: 503; refused credentials: 401)."""
    core = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    for create in (
        lambda: core.create_namespaced_service_account(
            NAMESPACE, {"metadata": {"name": "portalctl"}}
        ),
        lambda: rbac.create_namespaced_role(NAMESPACE, ROLE),
        lambda: rbac.create_namespaced_role_binding(NAMESPACE, BINDING),
        lambda: core.create_namespaced_service(NAMESPACE, SERVICE),
    ):
        with contextlib.suppress(ApiException):
            create()


def write_kubeconfig(path: Path, control_plane: Any, token_file: Path) -> None:
    server = yaml.safe_load(Path(control_plane.kubeconfig).read_text())["clusters"][0]["cluster"]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "portalctl", "user": {"tokenFile": token_file.name}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "portalctl"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(doc))


def test_a_rotated_token_file_is_sent_by_the_next_call_and_the_next_proxy_request(
    control_plane, kube, namespace, tmp_path
):
    core = client.CoreV1Api(kube)
    make_account(kube)
    token_file = tmp_path / "token"
    token_file.write_text(bound_token(core, "portalctl-a"))
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, control_plane, token_file)
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        api = kubeconfig_client()
    finally:
        del os.environ["KUBECONFIG"]
    cfg = config()
    target = kubernetes_target(cfg, api, request_timeout_s=TIMEOUT)
    ledger = Ledger(target.ledger, cfg.stack, target.name)
    auth = http_auth(api)
    prometheus = Prometheus(
        service_proxy(api, NAMESPACE, "prometheus", 9090),
        headers=auth.headers,
        ssl_context=auth.ssl_context,
    )

    # the API server knows a token once its cache holds the Secret it is bound to
    wait_for("the token accepted", lambda: not _refused(ledger))
    ledger.update(lambda d: None)
    assert _proxy_answer(prometheus) == 503  # through the proxy: authorized, no endpoints

    core.delete_namespaced_secret("portalctl-a", NAMESPACE)  # the token is no longer valid
    wait_for("the token refused", lambda: _refused(ledger))
    with pytest.raises(TargetUnreachable, match="HTTP 401"):
        ledger.read()
    assert _proxy_answer(prometheus) == 401

    token_file.write_text(bound_token(core, "portalctl-b"))  # the operator's tooling rotates it
    wait_for("the rotated token accepted", lambda: not _refused(ledger))  # the same client
    ledger.update(lambda d: None)
    assert _proxy_answer(prometheus) == 503


def _refused(ledger: Ledger) -> bool:
    try:
        ledger.read()
    except TargetUnreachable:
        return True
    return False


def _proxy_answer(prometheus: Prometheus) -> int:
    with pytest.raises(PrometheusError) as info:
        prometheus.query("up")
    for code in (401, 403, 503):
        if f"HTTP {code}" in str(info.value):
            return code
    pytest.fail(f"unexpected answer through the service proxy: {info.value}")
