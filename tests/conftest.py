"""Shared fixtures: real servers on free loopback ports, started from the installed binaries.

Session-scoped servers are shared by tests that only read and write data (each test gets its own
database / Redis db flushed); tests that stop or kill a server start their own through the
``*_factory`` fixtures, which tear everything down afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import yaml

from contract.config import StackConfig, parse_config, read_stack_values, stack_file
from rollout.local.processes import free_port
from rollout.local.servers import NginxServer, PostgresServer, PrometheusServer, RedisServer
from rollout.local.stack import DEFAULT_STACK_FILE, STACK, LocalStack

REPO = Path(__file__).resolve().parent.parent


def script(file: str) -> ModuleType:
    """``scripts/<file>.py`` imported as a module (its siblings importable, as when it runs)."""
    folder = str(REPO / "scripts")
    if folder not in sys.path:
        sys.path.append(folder)
    name = f"portal_{file}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{file}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def cluster_script() -> ModuleType:
    """``scripts/cluster.py`` (the control plane's build and start) imported as a module."""
    return script("cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the control plane is marked ``cluster`` (``make test-local`` leaves
    them out; ``make test`` runs them) and runs after the others, so the control plane is up only
    at the end of a session, not beside the timing-sensitive local release tests."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
    items[:] = [i for i in items if not i.get_closest_marker("cluster")] + [
        i for i in items if i.get_closest_marker("cluster")
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane's binaries before the first test when a selected test needs them
    and they are missing: a first build takes longer than one test's timeout."""
    if not any(item.get_closest_marker("cluster") for item in session.items):
        return
    script = cluster_script()
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        try:
            script.build()
            if any("data_plane" in getattr(i, "fixturenames", ()) for i in session.items):
                script.build_prometheus()
        except script.ClusterError as exc:
            raise pytest.UsageError(f"the control plane could not be built: {exc}") from exc


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler,
    kwok with one node): the one ``make cluster-up`` started if it runs, else a private one
    started here (built first if the binaries are missing) and stopped at the end of the session.
    Yields the script's ``Cluster``: ``kubeconfig``, ``server``, ``token``, ``ca``, ``node``,
    ``pod_cidr``, ``versions``, ``dir`` (logs under ``dir/logs``)."""
    script = cluster_script()
    shared = Path(os.environ.get("PORTAL_CLUSTER_DIR", script.DEFAULT_STATE))
    running = script.status(shared.resolve())
    if running is not None:
        yield running
        return
    state = Path(tempfile.mkdtemp(prefix="portal-cluster-", dir="/tmp"))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    # the first build takes minutes: show its progress instead of capturing it
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        cluster = script.up(state)
    try:
        yield cluster
    finally:
        script.down(state)
        if not os.environ.get("PORTAL_KEEP_TEST_SERVERS"):
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(control_plane: Any) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` with the control plane's admin kubeconfig."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=control_plane.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def data_plane(control_plane: Any, kube: Any) -> Iterator[Any]:
    """Real processes behind the pods of the namespaces a test enables (``tests/dataplane``):
    ``data_plane.enable(namespace)`` before the pods are created (an apply, ``pulumi up``),
    then the app, Postgres, Redis, the exporters, Prometheus, the Pushgateway and Alertmanager
    of that namespace run at their pod IPs. Stopped (processes, network namespaces, the admission
    policy) at the end of the session."""
    from contract.config import load_stack
    from tests.dataplane import DataPlane, default_images
    from tests.dataplane.images import repository

    app = repository(load_stack("staging", REPO).app.image)
    images = default_images(app, cluster_script().build_prometheus())
    workdir = Path(tempfile.mkdtemp(prefix="portal-data-plane-", dir="/tmp"))
    with DataPlane(kube, control_plane, workdir, images).running() as plane:
        yield plane
    if not os.environ.get("PORTAL_KEEP_TEST_SERVERS"):
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    """A world-traversable directory for server data (PostgreSQL runs as the postgres user)."""
    root = Path(tempfile.mkdtemp(prefix="portal-test-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    if not os.environ.get("PORTAL_KEEP_TEST_SERVERS"):
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_local_stack(prefix: str) -> Iterator[LocalStack]:
    """A whole local stack (``portalctl local up``) in a fresh world-traversable directory,
    brought down and removed afterwards; test modules share one through a module fixture."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    stack = LocalStack(root / "local")
    try:
        stack.up(lambda m: None)
        yield stack
    finally:
        stack.down(lambda m: None)
        if not os.environ.get("PORTAL_KEEP_TEST_SERVERS"):
            shutil.rmtree(root, ignore_errors=True)


def local_config_with(**canary: Any) -> StackConfig:
    """The shipped local stack config with these ``portal:canary`` keys replaced."""
    values = read_stack_values(DEFAULT_STACK_FILE)
    values["canary"] = {**values["canary"], **canary}
    return parse_config(values, STACK)


@contextlib.contextmanager
def local_stack_file(
    root: Path, alerts: dict[str, Any] | None = None, **canary: Any
) -> Iterator[Path]:
    """``<root>/Pulumi.local.yaml`` with these ``portal:canary`` keys (and ``portal:alerts``
    keys) replaced, as every ``portalctl --local`` started meanwhile reads it; with ``alerts``,
    the running Alertmanager and Prometheus take them too. All is put back afterwards."""
    path = stack_file(STACK, root)
    before = path.read_text() if path.exists() else None
    doc = yaml.safe_load(DEFAULT_STACK_FILE.read_text())
    doc["config"]["portal:canary"].update(canary)
    doc["config"]["portal:alerts"].update(alerts or {})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if alerts:
        apply_alerting(LocalStack(root))
    try:
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)
        if alerts:
            apply_alerting(LocalStack(root))


def apply_alerting(stack: LocalStack) -> None:
    """The stack file's alert keys into the running Alertmanager (routing) and Prometheus
    (rules), as ``portalctl local up`` does on a running stack."""
    from rollout.local import alerting

    state = stack.load()
    alerting.start(stack.root, stack.config(), state, lambda m: None)
    prometheus = stack.prometheus(state)
    prometheus.write_config()
    prometheus.reload()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def pg_server(server_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(server_root / "pg-shared", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the shared server; dropped afterwards."""
    name = _unique("t").replace("-", "_")
    dsn = pg_server.create_database(name)
    yield dsn
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_factory(server_root: Path) -> Iterator[Callable[..., PostgresServer]]:
    """Start a private PostgreSQL (for tests that stop or crash it)."""
    started: list[PostgresServer] = []

    def start(**settings: str) -> PostgresServer:
        server = PostgresServer(server_root / _unique("pg"), free_port(), settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop("immediate")


@pytest.fixture(scope="session")
def redis_server(server_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(server_root / "redis-shared", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, flushed."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_factory(server_root: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a private Redis (for tests that stop or kill it)."""
    started: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(server_root / _unique("redis"), free_port(), **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def prometheus_factory(server_root: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start a Prometheus with the given config text (and rule files)."""
    started: list[PrometheusServer] = []

    def start(config: str, rule_files: dict[str, str] | None = None) -> PrometheusServer:
        server = PrometheusServer(
            server_root / _unique("prom"), free_port(), config, rule_files or {}
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def nginx_factory(server_root: Path) -> Iterator[Callable[[Callable[[int], str]], NginxServer]]:
    """Start nginx; the argument builds the config text from the port it will listen on."""
    started: list[NginxServer] = []

    def start(config_for_port: Callable[[int], str]) -> NginxServer:
        port = free_port()
        server = NginxServer(server_root / _unique("nginx"), port, config_for_port(port)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
