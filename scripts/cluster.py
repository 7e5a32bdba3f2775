#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, built on this machine from Go modules.

    scripts/cluster.py build              # compile the pinned binaries once (cached by pin hash)
    scripts/cluster.py up   [--dir DIR]   # etcd, kube-apiserver, controller-manager, scheduler,
                                          # kwok with one fake Node; prints `export KUBECONFIG=...`
    scripts/cluster.py status [--dir DIR] [--json]
    scripts/cluster.py env  [--dir DIR]   # the export line only (for `eval`)
    scripts/cluster.py down [--dir DIR]   # stop everything and remove the state
    scripts/cluster.py pin  [--kubernetes vX.Y.Z] [--kwok vX.Y.Z] [--prometheus v0.X.Y]
                                          # regenerate the wrapper modules

The binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd from one
``k8s.io/kubernetes`` release, and kwok) are built once into a cache keyed by their pins:
``cluster_build.py`` beside this file says how. Only the standard library and the ``go`` and
``openssl`` commands are used, so plain ``python3`` runs this before any virtualenv exists; tests
import it as a module.

State (certificates, tokens, kubeconfigs, etcd data, pids and one log per component) lives in
``DIR`` (default ``.portal/cluster`` in the repository). ``up`` on a running cluster is a no-op
that prints the same export line; ``up`` after a crash stops what is left and starts afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gobuild  # scripts/gobuild.py, beside this file
from cluster_build import (
    CACHE_ROOT,
    DEFAULT_STATE,
    MODULES,
    Build,
    ClusterError,
    Versions,
    build,
    build_prometheus,
    copy_crds,
    pin,
    say,
)
from cluster_config import (
    ADMIN_USER,
    AUDIT_POLICY,
    CLUSTER_CIDR,
    NODE_ALLOCATABLE,
    NODE_CAPACITY,
    NODE_NAME,
    POD_CIDR,
    SERVICE_CIDR,
    apiserver_argv,
    certificates,
    controller_argv,
    credentials,
    etcd_argv,
    kwok_argv,
    node,
)

__all__ = [
    "CACHE_ROOT",
    "CLUSTER_CIDR",
    "MODULES",
    "NODE_ALLOCATABLE",
    "NODE_CAPACITY",
    "POD_CIDR",
    "SERVICE_CIDR",
    "Versions",
    "build",
    "build_prometheus",
    "pin",
]

# Each running cluster on this machine claims its own /24 of CLUSTER_CIDR (the first free one,
# POD_CIDR when no other cluster runs), so the routes two test sessions add to their pods never
# collide. Machine-wide, whoever runs the cluster: /tmp is where every worktree's sessions meet.
CIDR_CLAIMS = Path(os.environ.get("PORTAL_CLUSTER_CLAIMS", "/tmp/portal-cluster-claims"))  # noqa: S108
READY_TIMEOUT = float(os.environ.get("PORTAL_CLUSTER_READY_TIMEOUT", "180"))

# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Component:
    name: str
    pid: int
    log: str


@dataclass
class Cluster:
    """A running control plane: what ``status --json`` prints and ``cluster.json`` holds."""

    dir: str
    kubeconfig: str
    server: str
    token: str
    ca: str
    versions: dict[str, str]
    ports: dict[str, int]
    components: list[Component] = field(default_factory=list)
    node: str = NODE_NAME
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR
    started_seconds: float = 0.0

    @property
    def state(self) -> Path:
        return Path(self.dir)

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per request (``AUDIT_POLICY``)."""
        return self.state / "logs" / "audit.log"

    @classmethod
    def load(cls, state: Path) -> Cluster | None:
        try:
            data = json.loads((state / "cluster.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        data["components"] = [Component(**c) for c in data.get("components", [])]
        return cls(**data)

    def save(self) -> None:
        tmp = self.state / "cluster.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.state / "cluster.json")

    def export_line(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig}"

    # -- the API, with the admin's token -------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._context()) as resp:
                raw = resp.read()
                status: int = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def ready(self) -> bool:
        """The API server answers /readyz and the node is Ready (kwok heartbeats it)."""
        try:
            status, _ = self.request("GET", "/readyz", timeout=3)
            if status != 200:
                return False
            status, node = self.request("GET", f"/api/v1/nodes/{self.node}", timeout=3)
        except OSError:
            return False
        if status != 200:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return False
        status, _ = self.request(
            "GET",
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}",
            timeout=3,
        )
        return status == 200

    def alive(self) -> list[str]:
        return [c.name for c in self.components if _our_process(c.pid, self.state)]

    def dead(self) -> list[str]:
        return [c.name for c in self.components if not _our_process(c.pid, self.state)]


# The processes this process started, so a failed start can say how a component ended.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _our_process(pid: int, state: Path) -> bool:
    """True if ``pid`` runs and is one of ours (its command line names our state directory), so a
    reused pid is never signalled."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # started by this process: ask it directly (right after the fork the new program's
        # command line can still read empty)
        return child.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and str(state) in cmdline


def _stop_pid(pid: int, state: Path, grace: float = 15) -> None:
    if not _our_process(pid, state):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _our_process(pid, state):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _run_checked(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise ClusterError(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")


def _wait(what: str, check: Callable[[], bool], log: Path | None, pid: int | None, state: Path,
          timeout: float = READY_TIMEOUT) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not _our_process(pid, state):
            raise ClusterError(f"{what} {_how_it_ended(pid)} while starting; {_tail(log)}")
        time.sleep(0.2)
    raise ClusterError(f"{what} not ready after {timeout:.0f}s; {_tail(log)}")


def _how_it_ended(pid: int) -> str:
    proc = _CHILDREN.get(pid)
    code = proc.poll() if proc is not None else None
    if code is None:
        return "stopped"
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _tail(log: Path | None, lines: int = 8) -> str:
    if log is None or not log.exists():
        return "no log"
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"its log {log} ends:\n  " + "\n  ".join(text)


def _http_ok(url: str, token: str | None = None, ca: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()  # noqa: S323
    try:
        with urllib.request.urlopen(req, timeout=3, context=context) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _start(state: Path, name: str, argv: list[str]) -> Component:
    log = state / "logs" / f"{name}.log"
    with log.open("ab") as sink:
        sink.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            cwd=state, start_new_session=True,
        )  # fmt: skip
    _CHILDREN[proc.pid] = proc
    return Component(name, proc.pid, str(log))


def status(state: Path = DEFAULT_STATE) -> Cluster | None:
    """The cluster running from ``state`` and ready, else None."""
    cluster = Cluster.load(state)
    if cluster is None or cluster.dead() or not cluster.ready():
        return None
    return cluster


def up(state: Path = DEFAULT_STATE, progress: Callable[[str], None] = say) -> Cluster:
    """Start the control plane (building it first if needed); a no-op when it already runs."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    with gobuild.locked(state / ".lock"):
        running = status(state)
        if running is not None:
            return running
        if (state / "cluster.json").exists():
            progress(f"cleaning up a stale cluster in {state}")
            _down(state)
        binaries = build()
        copy_crds(binaries.crds)
        return _up(state, binaries, progress)


def _claim_pod_cidr(state: Path) -> str:
    """The first /24 of CLUSTER_CIDR that no running cluster on this machine holds, recorded as
    ours (a claim file naming our state directory) until ``down``; a claim whose cluster no
    longer runs is taken over."""
    CIDR_CLAIMS.mkdir(parents=True, exist_ok=True)
    with gobuild.locked(CIDR_CLAIMS / ".lock"):
        for third in range(256):
            cidr = f"10.244.{third}.0/24"
            claim = CIDR_CLAIMS / cidr.replace("/", "_")
            try:
                owner = Path(claim.read_text().strip())
            except FileNotFoundError:
                owner = None
            if owner is not None and owner != state:
                holder = Cluster.load(owner)
                if holder is not None and holder.pod_cidr == cidr and holder.alive():
                    continue
            claim.write_text(f"{state}\n")
            return cidr
    raise ClusterError(f"every /24 of {CLUSTER_CIDR} is held by a running cluster ({CIDR_CLAIMS})")


def _release_pod_cidr(state: Path, cidr: str) -> None:
    claim = CIDR_CLAIMS / cidr.replace("/", "_")
    with contextlib.suppress(FileNotFoundError):
        if Path(claim.read_text().strip()) == state:
            claim.unlink()


def _up(state: Path, built: Build, progress: Callable[[str], None]) -> Cluster:
    started = time.monotonic()
    for sub in ("pki", "logs", "etcd", "certs"):
        (state / sub).mkdir(mode=0o700, exist_ok=True)
    pki = state / "pki"
    certificates(pki)
    ports = {
        name: free_port()
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    issued = credentials(state, server)
    cluster = Cluster(
        dir=str(state),
        kubeconfig=str(state / "kubeconfig"),
        server=server,
        token=issued[ADMIN_USER],
        ca=str(pki / "ca.crt"),
        versions=asdict(built.versions),
        ports=ports,
        pod_cidr=_claim_pod_cidr(state),
    )
    cluster.save()

    def launch(name: str, argv: list[str], healthy: Callable[[], bool]) -> Component:
        component = _start(state, name, argv)
        cluster.components.append(component)
        cluster.save()
        _wait(name, healthy, Path(component.log), component.pid, state)
        return component

    try:
        progress(f"starting etcd {built.versions.etcd}")
        etcd_health = f"http://127.0.0.1:{ports['etcd']}/health"
        launch("etcd", etcd_argv(built.bin, state, ports), lambda: _http_ok(etcd_health))
        (pki / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY, indent=2))
        progress(f"starting kube-apiserver {built.versions.kubernetes} on {server}")
        launch(
            "kube-apiserver",
            apiserver_argv(built.bin, state, ports, cluster.audit_log),
            lambda: _http_ok(f"{server}/readyz", cluster.token, cluster.ca),
        )
        progress("starting kube-controller-manager and kube-scheduler")
        manager = None
        for name, port in (
            ("kube-controller-manager", ports["controller-manager"]),
            ("kube-scheduler", ports["scheduler"]),
        ):
            started_one = launch(
                name,
                controller_argv(name, built.bin, state, port),
                lambda port=port: _http_ok(f"https://127.0.0.1:{port}/healthz"),  # type: ignore[misc]
            )
            manager = manager or started_one
        assert manager is not None

        progress(f"registering node {NODE_NAME} (pod CIDR {cluster.pod_cidr}) and starting kwok")
        _register_node(cluster, built)
        kwok = kwok_argv(built, state, ports["kwok"], cluster.pod_cidr)
        launch("kwok", kwok, cluster.ready)

        def default_account() -> bool:
            code, _ = cluster.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return code == 200

        _wait("the service account controller", default_account, Path(manager.log), None, state)
    except BaseException:
        _down(state, keep_logs=True)
        raise
    cluster.started_seconds = round(time.monotonic() - started, 1)
    cluster.save()
    progress(
        f"control plane ready in {cluster.started_seconds:.1f}s: Kubernetes "
        f"{built.versions.kubernetes} at {server}, node {NODE_NAME}, logs in {state / 'logs'}"
    )
    return cluster


def _register_node(cluster: Cluster, built: Build) -> None:
    """The node kwok plays, and kwok's CRDs (its Logs objects: one per pod whose log a runtime
    writes), established before kwok starts."""
    code, body = cluster.request("POST", "/api/v1/nodes", node(cluster.pod_cidr))
    if code not in (201, 409):
        raise ClusterError(f"creating node {NODE_NAME} failed: HTTP {code}: {body}")
    kubectl = [str(built.bin / "kubectl"), f"--kubeconfig={cluster.kubeconfig}"]
    for crd in sorted(built.crds.glob("*.yaml")):
        _run_checked([*kubectl, "apply", "--server-side", "-f", str(crd)], "installing a CRD")
    _run_checked(
        [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
        "waiting for kwok's CRDs",
    )


def _down(state: Path, keep_logs: bool = False) -> list[str]:
    """Stop every component recorded in ``state`` (newest first) and remove the state; logs are
    kept when a start failed, for diagnosis."""
    cluster = Cluster.load(state)
    stopped = []
    if cluster is not None:
        for component in reversed(cluster.components):
            if _our_process(component.pid, state):
                _stop_pid(component.pid, state)
                stopped.append(component.name)
        _release_pod_cidr(state, cluster.pod_cidr)
    for sub in ("pki", "etcd", "certs", "kubeconfig", "cluster.json"):
        path = state / sub
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for config in state.glob("*.kubeconfig"):
        config.unlink()
    if not keep_logs:
        shutil.rmtree(state / "logs", ignore_errors=True)
    return stopped


def down(state: Path = DEFAULT_STATE) -> list[str]:
    state = state.resolve()
    if not state.exists():
        return []
    with gobuild.locked(state / ".lock"):
        return _down(state)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/cluster.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the control plane (building it first if needed)"),
        ("down", "stop the control plane and remove its state"),
        ("status", "say whether the control plane runs (exit 1 if not)"),
        ("env", "print the export line of the running control plane (exit 1 if none)"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument(
            "--dir", type=Path, default=Path(os.environ.get("PORTAL_CLUSTER_DIR", DEFAULT_STATE)),
            help="state directory (default .portal/cluster, or $PORTAL_CLUSTER_DIR)",
        )  # fmt: skip
        if name == "status":
            command.add_argument("--json", action="store_true", help="machine-readable")
    build_cmd = sub.add_parser("build", help="compile the pinned binaries into the cache")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("bin", help="print the directory of the built binaries (building if needed)")
    pin_cmd = sub.add_parser("pin", help="regenerate the wrapper modules for other releases")
    pin_cmd.add_argument("--kubernetes", help="k8s.io/kubernetes release, e.g. v1.37.2")
    pin_cmd.add_argument("--kwok", help="sigs.k8s.io/kwok release, e.g. v0.8.0")
    pin_cmd.add_argument(
        "--prometheus", help="github.com/prometheus/prometheus module, e.g. v0.54.1 (= v2.54.1)"
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            built = build(force=args.force)
            say(f"binaries in {built.bin}")
            say(f"the data plane's Prometheus: {build_prometheus(force=args.force)}")
        elif args.command == "bin":
            print(build().bin)
        elif args.command == "pin":
            pin(args.kubernetes, args.kwok, args.prometheus)
        elif args.command == "up":
            print(up(args.dir).export_line())
        elif args.command == "down":
            stopped = down(args.dir)
            say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        elif args.command in ("status", "env"):
            found = status(args.dir.resolve())
            if found is None:
                print(f"cluster: not running (state {args.dir})", file=sys.stderr)
                return 1
            if args.command == "env":
                print(found.export_line())
            elif args.json:
                print(json.dumps(asdict(found), indent=2))
            else:
                print(
                    f"running: Kubernetes {found.versions['kubernetes']} at {found.server}, "
                    f"node {found.node} (pod CIDR {found.pod_cidr}), "
                    f"components {', '.join(found.alive())}\n{found.export_line()}"
                )
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
