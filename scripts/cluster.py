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

The binaries come from two small wrapper modules beside this file (``cluster/kubernetes`` and
``cluster/kwok``: a generated ``go.mod`` and ``go.sum`` each, no source): kube-apiserver,
kube-controller-manager, kube-scheduler and kubectl from one ``k8s.io/kubernetes`` release, etcd at
the version that release pins, and kwok. They are built once into
``~/.cache/portal-cluster/<hash of the pins, the Go version and the build flags>/`` and reused
until a pin changes. Only the standard library and the ``go`` and ``openssl`` commands are used,
so plain ``python3`` runs this before any virtualenv exists; tests import it as a module.

State (certificates, tokens, kubeconfigs, etcd data, pids and one log per component) lives in
``DIR`` (default ``.portal/cluster`` in the repository). ``up`` on a running cluster is a no-op
that prints the same export line; ``up`` after a crash stops what is left and starts afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODULES = Path(__file__).resolve().parent / "cluster"
KUBERNETES_MODULE = MODULES / "kubernetes"
KWOK_MODULE = MODULES / "kwok"
DEFAULT_STATE = REPO / ".portal" / "cluster"
CACHE_ROOT = Path(os.environ.get("PORTAL_CLUSTER_CACHE", "~/.cache/portal-cluster")).expanduser()

# The binaries each wrapper module builds (package path -> binary name).
KUBERNETES_TOOLS = {
    "k8s.io/kubernetes/cmd/kube-apiserver": "kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager": "kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler": "kube-scheduler",
    "k8s.io/kubernetes/cmd/kubectl": "kubectl",
    "go.etcd.io/etcd/server/v3": "etcd",
}
KWOK_TOOLS = {"sigs.k8s.io/kwok/cmd/kwok": "kwok"}
# Prometheus for the tests' data plane (tests/dataplane/): the release the stacks' image pins,
# with the Kubernetes service discovery their scrape config uses (Debian's build has none). Its
# own wrapper module and cache entry, so it never invalidates the control plane's.
PROMETHEUS_MODULE = MODULES / "prometheus"
PROMETHEUS_TOOLS = {"github.com/prometheus/prometheus/cmd/prometheus": "prometheus"}
BINARIES = (*KUBERNETES_TOOLS.values(), *KWOK_TOOLS.values())

# kwok ships no stages in its binary: these files of its module drive the fake kubelet. Node:
# initialise and keep the node Ready through its Lease; pods: Running and Ready once scheduled,
# Succeeded for a Job's pods, gone when deleted.
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
# kwok serves a pod's log (`kubectl logs`, the API's pods/log) from the file a `Logs` object of
# the same name points at; its CRD comes from the module too. Not part of the build, so not of
# the cache key: copied into the cache when missing.
KWOK_CRDS = ("kustomize/crd/bases/kwok.x-k8s.io_logs.yaml",)
# Our own stages, read from the repository at every start (each file says what it plays): the
# ingress controller's address on every Ingress of class nginx, which `pulumi up` waits for; pods
# annotated `portal.test/runtime: process` are left to a process runtime outside kwok.
RUNTIME_STAGES = MODULES / "stages"

# Addresses. Pods get IPs from the node's podCIDR (kwok allocates them); nothing routes there
# unless a test puts processes at those addresses inside its own network namespace. Each running
# cluster on this machine claims its own /24 of CLUSTER_CIDR (the first free one, POD_CIDR when
# no other cluster runs), so the routes two test sessions add to their pods never collide.
NODE_NAME = "portal-node-1"
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
# machine-wide, whoever runs the cluster: /tmp is where every worktree's sessions meet
CIDR_CLAIMS = Path(os.environ.get("PORTAL_CLUSTER_CLAIMS", "/tmp/portal-cluster-claims"))  # noqa: S108
SERVICE_CIDR = "10.96.0.0/16"
# One node with a common machine size (16 cores, 64 GiB) less the usual system reservations.
NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
NODE_ALLOCATABLE = {"cpu": "15800m", "memory": "62Gi", "pods": "110", "ephemeral-storage": "190Gi"}

ADMIN_USER = "portal-admin"
# What the API server records of each request (verb, resource, user, answer), for people and
# tests asking what a client really calls: everyone but the control plane's own components.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "None",
            "users": [
                "system:kube-controller-manager",
                "system:kube-scheduler",
                "system:apiserver",
                "portal-kwok",
            ],
        },
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "Metadata"},
    ],
}
READY_TIMEOUT = float(os.environ.get("PORTAL_CLUSTER_READY_TIMEOUT", "180"))


class ClusterError(Exception):
    """A one-line, user-facing failure: what failed and where to look."""


def say(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


# --------------------------------------------------------------------------------------------
# Pins: the wrapper modules
# --------------------------------------------------------------------------------------------


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "local")  # never download a toolchain behind the user's back
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly -buildvcs=false").strip()
    return env


def _go(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    if shutil.which("go") is None:
        raise ClusterError("the `go` command is missing: install Go 1.26 or newer")
    proc = subprocess.run(
        ["go", *args], cwd=cwd, env=env or _go_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise ClusterError(f"go {' '.join(args)} (in {cwd}) failed: {' | '.join(detail[-5:])}")
    return proc.stdout


def _required(gomod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod.read_text(), re.M)
    if not match:
        raise ClusterError(f"{gomod} does not require {module}: run `scripts/cluster.py pin`")
    return match.group(1)


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    go: str

    @classmethod
    def pinned(cls) -> Versions:
        go = _go(["env", "GOVERSION"], MODULES).strip()
        return cls(
            kubernetes=_required(KUBERNETES_MODULE / "go.mod", "k8s.io/kubernetes"),
            etcd=_required(KUBERNETES_MODULE / "go.mod", "go.etcd.io/etcd/server/v3"),
            kwok=_required(KWOK_MODULE / "go.mod", "sigs.k8s.io/kwok"),
            go=go,
        )


def _download(module: str, version: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = _go(["mod", "download", "-json", f"{module}@{version}"], Path(tmp))
    info: dict[str, Any] = json.loads(out)
    if info.get("Error"):
        raise ClusterError(f"{module}@{version}: {info['Error']}")
    return info


def _directives(gomod_text: str) -> list[str]:
    """The release's own ``go`` and ``godebug`` lines (they decide the binaries' behaviour)."""
    return [
        line for line in gomod_text.splitlines() if re.match(r"^(go|godebug|toolchain)\s", line)
    ]


def kubernetes_gomod(version: str, release_gomod: str) -> str:
    """A wrapper go.mod for ``k8s.io/kubernetes@version``: its staging modules (``v0.0.0`` plus a
    local replace upstream) replaced by their tagged releases, read from the release's go.mod."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not match:
        raise ClusterError(f"kubernetes version {version!r}: expected a release like v1.37.2")
    staging_version = f"v0.{match.group(1)}.{match.group(2)}"
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", release_gomod, re.M)
    if not staging:
        raise ClusterError(f"k8s.io/kubernetes@{version}: no staging replace lines in its go.mod")
    lines = [
        "// Generated by `scripts/cluster.py pin` from the release's own go.mod: do not edit.",
        f"// The control plane of k8s.io/kubernetes {version}; its staging modules at"
        f" {staging_version}.",
        "module portal.local/cluster/kubernetes",
        "",
        *_directives(release_gomod),
        "",
        "tool (",
        *(f"\t{tool}" for tool in KUBERNETES_TOOLS),
        ")",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {staging_version}" for mod in staging),
        ")",
        "",
    ]
    return "\n".join(lines)


def kwok_gomod(version: str, release_gomod: str) -> str:
    lines = [
        "// Generated by `scripts/cluster.py pin`: do not edit.",
        f"// kwok {version} with the dependency set of its own release (apart from the control"
        " plane's).",
        "module portal.local/cluster/kwok",
        "",
        *_directives(release_gomod),
        "",
        "tool sigs.k8s.io/kwok/cmd/kwok",
        "",
        f"require sigs.k8s.io/kwok {version}",
        "",
    ]
    return "\n".join(lines)


def prometheus_gomod(version: str, release_gomod: str) -> str:
    """Prometheus's module version ``v0.X.Y`` is release ``v2.X.Y``; its own replace lines
    (klog through go-kit) are kept, as its release build has them."""
    block = re.search(r"^replace \((.*?)^\)", release_gomod, re.M | re.S)
    replaces = [line for line in (block.group(1) if block else "").splitlines() if "=>" in line]
    lines = [
        "// Generated by `scripts/cluster.py pin`: do not edit.",
        f"// Prometheus {prometheus_release(version)} (module {version}), the tests' data plane's.",
        "module portal.local/cluster/prometheus",
        "",
        # `tool` lines need go 1.24; the release's own go line is older
        *(
            "go 1.24" if line.startswith("go ") and _older(line, "1.24") else line
            for line in _directives(release_gomod)
        ),
        "",
        *(f"tool {tool}" for tool in PROMETHEUS_TOOLS),
        "",
        f"require github.com/prometheus/prometheus {version}",
        "",
        "replace (",
        *replaces,
        ")",
        "",
    ]
    return "\n".join(lines)


def _older(go_line: str, version: str) -> bool:
    have = [int(x) for x in go_line.split()[1].split(".")[:2]]
    return have < [int(x) for x in version.split(".")]


def prometheus_release(module_version: str) -> str:
    return re.sub(r"^v0\.", "v2.", module_version)


def pin(kubernetes: str | None, kwok: str | None, prometheus: str | None = None) -> None:
    """Regenerate the wrapper modules (go.mod from the releases' own go.mod, go.sum by tidy)."""
    current = {}
    with contextlib.suppress(ClusterError, FileNotFoundError):
        current = {
            "kubernetes": _required(KUBERNETES_MODULE / "go.mod", "k8s.io/kubernetes"),
            "kwok": _required(KWOK_MODULE / "go.mod", "sigs.k8s.io/kwok"),
        }
    only_prometheus = bool(prometheus) and not kubernetes and not kwok
    kubernetes = kubernetes or current.get("kubernetes")
    kwok = kwok or current.get("kwok")
    if not only_prometheus and (not kubernetes or not kwok):
        raise ClusterError("nothing pinned yet: pass --kubernetes vX.Y.Z and --kwok vX.Y.Z")
    with contextlib.suppress(ClusterError, FileNotFoundError):
        current["prometheus"] = _required(
            PROMETHEUS_MODULE / "go.mod", "github.com/prometheus/prometheus"
        )
    prometheus = prometheus or current.get("prometheus")
    modules: list[tuple[str, str, Path, Callable[[str, str], str]]] = []
    if not only_prometheus:
        assert kubernetes and kwok
        modules += [
            ("k8s.io/kubernetes", kubernetes, KUBERNETES_MODULE, kubernetes_gomod),
            ("sigs.k8s.io/kwok", kwok, KWOK_MODULE, kwok_gomod),
        ]
    if prometheus:
        modules.append(
            ("github.com/prometheus/prometheus", prometheus, PROMETHEUS_MODULE, prometheus_gomod)
        )
    for module, version, path, render in modules:
        say(f"pinning {module} {version}")
        info = _download(module, version)
        path.mkdir(parents=True, exist_ok=True)
        (path / "go.mod").write_text(render(version, Path(info["GoMod"]).read_text()))
        (path / "go.sum").unlink(missing_ok=True)
        env = _go_env()
        env["GOFLAGS"] = env["GOFLAGS"].replace("-mod=readonly", "")
        _go(["mod", "tidy"], path, env)
    if not only_prometheus:
        say(f"pinned: {Versions.pinned()}")


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _ldflags(versions: Versions, build_date: str) -> dict[Path, list[str]]:
    """Version stamps, so the servers and kubectl report the release (not v0.0.0)."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", versions.kubernetes)
    assert match, versions.kubernetes
    stamps = {
        "gitVersion": versions.kubernetes,
        "gitMajor": match.group(1),
        "gitMinor": match.group(2),
        # The module proxy carries no commit; the tree is the released module, unmodified.
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    kube = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        kube += [f"-X {package}.{name}={value}" for name, value in stamps.items()]
    kwok = [
        "-s",
        "-w",
        f"-X sigs.k8s.io/kwok/pkg/consts.Version={versions.kwok}",
        f"-X sigs.k8s.io/kwok/pkg/consts.KubeVersion={versions.kubernetes}",
    ]
    return {KUBERNETES_MODULE: kube, KWOK_MODULE: kwok}


def _release_date(versions: Versions) -> str:
    """The release tag's time as the module proxy records it (reproducible, unlike now())."""
    date = _go(["list", "-m", "-f", "{{.Time}}", "k8s.io/kubernetes"], KUBERNETES_MODULE).strip()
    parsed = time.strptime(date.split(" +")[0], "%Y-%m-%d %H:%M:%S")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)


def _build_args(ldflags: list[str], tools: dict[str, str], out: Path) -> list[str]:
    return ["build", "-v", "-trimpath", "-ldflags", " ".join(ldflags), "-o", f"{out}/", *tools]


def cache_key(versions: Versions) -> str:
    """Hash of the wrapper modules, the Go version and the build recipe."""
    digest = hashlib.sha256()
    for module in (KUBERNETES_MODULE, KWOK_MODULE):
        for name in ("go.mod", "go.sum"):
            digest.update((module / name).read_bytes())
    digest.update(versions.go.encode())
    digest.update(f"{sys.platform}".encode())
    # The build date follows from the pin, so the recipe is hashed without it.
    flags = _ldflags(versions, build_date="")
    recipe = {
        module.name: _build_args(flags[module], tools, Path("out"))
        for module, tools in ((KUBERNETES_MODULE, KUBERNETES_TOOLS), (KWOK_MODULE, KWOK_TOOLS))
    }
    digest.update(json.dumps({"recipe": recipe, "stages": KWOK_STAGES}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Build:
    root: Path
    versions: Versions

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    @property
    def crds(self) -> Path:
        return self.root / "crds"

    def binary(self, name: str) -> Path:
        return self.bin / name

    def complete(self) -> bool:
        return (self.root / "build.json").exists() and all(
            self.binary(name).exists() for name in BINARIES
        )


def _run_go_build(label: str, module: Path, args: list[str], total: int, log: Path) -> None:
    """One ``go build -v``: a progress line every 20 s, the compiler's errors on failure."""
    started = time.monotonic()
    compiled = 0
    last = ""
    errors: deque[str] = deque(maxlen=40)
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(20):
            phase = f"compiled {compiled} of ~{total} packages"
            if compiled >= total * 0.97:
                phase += ", linking"
            say(f"[{_clock(time.monotonic() - started)}] {label}: {phase} (last: {last})")

    ticker = threading.Thread(target=report, daemon=True)
    with log.open("a") as sink:
        sink.write(f"$ (cd {module} && go {' '.join(args)})\n")
        proc = subprocess.Popen(
            ["nice", "-n", "10", "go", *args],
            cwd=module,
            env=_go_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ticker.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            text = line.rstrip()
            if re.fullmatch(r"[\w./~+-]+", text):
                compiled += 1
                last = text
            elif text:
                errors.append(text)
        code = proc.wait()
        stop.set()
    if code != 0:
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        raise ClusterError(
            f"building {label} failed (go build exit {code}) after "
            f"{_clock(time.monotonic() - started)}; the compiler's output is above, "
            f"the whole log in {log}"
        )
    say(f"[{_clock(time.monotonic() - started)}] {label}: built")


def build(force: bool = False) -> Build:
    """The pinned binaries, compiled once into the cache (a lock keeps parallel callers apart)."""
    versions = Versions.pinned()
    root = CACHE_ROOT / cache_key(versions)
    result = Build(root, versions)
    if result.complete() and not force:
        return result
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    lock = CACHE_ROOT / f"{root.name}.lock"
    with _locked(lock, f"waiting for another process building the same pins ({lock})"):
        if result.complete() and not force:
            return result  # another process built it while we waited
        started = time.monotonic()
        say(
            f"building the control plane into {root} (Kubernetes {versions.kubernetes}, "
            f"etcd {versions.etcd}, kwok {versions.kwok}, {versions.go}); "
            "a first build takes a while"
        )
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        log = tmp / "build.log"
        flags = _ldflags(versions, _release_date(versions))
        for module, tools in ((KUBERNETES_MODULE, KUBERNETES_TOOLS), (KWOK_MODULE, KWOK_TOOLS)):
            t0 = time.monotonic()
            say(f"downloading the modules of {module.name} (go mod download)")
            _go(["mod", "download"], module)
            say(f"[{_clock(time.monotonic() - t0)}] modules of {module.name} downloaded")
            total = len(_go(["list", "-deps", *tools], module).split())
            label = ", ".join(tools.values())
            args = _build_args(flags[module], tools, tmp / "bin")
            _run_go_build(label, module, args, total, log)
            for package, name in tools.items():
                # go names a binary after the path's last element, less a /vN suffix
                default = re.sub(r"/v\d+$", "", package).rsplit("/", 1)[-1]
                if default != name:
                    (tmp / "bin" / default).rename(tmp / "bin" / name)
        kwok_dir = _kwok_dir()
        (tmp / "stages").mkdir()
        for stage in KWOK_STAGES:
            shutil.copy(kwok_dir / stage, tmp / "stages" / Path(stage).name)
        _copy_crds(tmp / "crds", kwok_dir)
        seconds = time.monotonic() - started
        (tmp / "build.json").write_text(
            json.dumps({"versions": asdict(versions), "seconds": round(seconds, 1)}, indent=2)
        )
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        say(f"[{_clock(seconds)}] control plane built: {root / 'bin'}")
    return result


def _kwok_dir() -> Path:
    return Path(_go(["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"], KWOK_MODULE).strip())


def _copy_crds(into: Path, kwok_dir: Path | None = None) -> None:
    missing = [crd for crd in KWOK_CRDS if not (into / Path(crd).name).exists()]
    if not missing:
        return
    kwok_dir = kwok_dir or _kwok_dir()
    into.mkdir(parents=True, exist_ok=True)
    for crd in missing:
        shutil.copy(kwok_dir / crd, into / Path(crd).name)


def build_prometheus(force: bool = False) -> Path:
    """The data plane's Prometheus, compiled once into its own cache entry; returns the binary."""
    version = _required(PROMETHEUS_MODULE / "go.mod", "github.com/prometheus/prometheus")
    release = prometheus_release(version)
    go = _go(["env", "GOVERSION"], MODULES).strip()
    date = _go(
        ["list", "-m", "-f", "{{.Time}}", "github.com/prometheus/prometheus"], PROMETHEUS_MODULE
    ).strip()[:10]
    stamps = {
        "Version": release.removeprefix("v"),
        "Revision": version,
        "Branch": "release",
        "BuildUser": "portal@module-proxy",
        "BuildDate": date,
    }
    ldflags = ["-s", "-w"] + [
        f"-X github.com/prometheus/common/version.{k}={v}" for k, v in stamps.items()
    ]
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((PROMETHEUS_MODULE / name).read_bytes())
    digest.update(json.dumps([go, sys.platform, ldflags]).encode())
    root = CACHE_ROOT / f"prometheus-{digest.hexdigest()[:16]}"
    binary = root / "bin" / "prometheus"
    if binary.exists() and not force:
        return binary
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with _locked(root.with_name(root.name + ".lock"), f"waiting for another build of {root}"):
        if binary.exists() and not force:
            return binary
        started = time.monotonic()
        say(f"building Prometheus {release} into {root} (once; a first build takes minutes)")
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        _go(["mod", "download"], PROMETHEUS_MODULE)
        total = len(_go(["list", "-deps", *PROMETHEUS_TOOLS], PROMETHEUS_MODULE).split())
        args = _build_args(ldflags, PROMETHEUS_TOOLS, tmp / "bin")
        _run_go_build("prometheus", PROMETHEUS_MODULE, args, total, tmp / "build.log")
        seconds = time.monotonic() - started
        (tmp / "build.json").write_text(json.dumps({"version": release, "seconds": seconds}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        say(f"[{_clock(seconds)}] Prometheus built: {binary}")
    return binary


@contextlib.contextmanager
def _locked(path: Path, waiting: str | None = None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                say(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _certificates(pki: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1, localhost, the in-cluster names)
    and the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "3650",
        "-subj", "/CN=portal-cluster-ca", "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    _openssl("genrsa", "-out", "apiserver.key", "2048", cwd=pki)
    _openssl(
        "req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
        "-out", "apiserver.csr", cwd=pki,
    )  # fmt: skip
    sans = ",".join(
        [
            "IP:127.0.0.1",
            "IP:10.96.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    (pki / "apiserver.ext").write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", "apiserver.ext",
        "-out", "apiserver.crt", cwd=pki,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def _kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    """A kubeconfig (JSON is YAML) with the CA inline, so it can be copied anywhere."""
    import base64

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "portal",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "portal", "context": {"cluster": "portal", "user": user}}],
        "current-context": "portal",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


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
    with _locked(state / ".lock"):
        running = status(state)
        if running is not None:
            return running
        if (state / "cluster.json").exists():
            progress(f"cleaning up a stale cluster in {state}")
            _down(state)
        binaries = build()
        _copy_crds(binaries.crds)
        return _up(state, binaries, progress)


def _claim_pod_cidr(state: Path) -> str:
    """The first /24 of CLUSTER_CIDR that no running cluster on this machine holds, recorded as
    ours (a claim file naming our state directory) until ``down``; a claim whose cluster no
    longer runs is taken over."""
    CIDR_CLAIMS.mkdir(parents=True, exist_ok=True)
    with _locked(CIDR_CLAIMS / ".lock"):
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
    _certificates(pki)
    ports = {
        name: free_port()
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    tokens = {
        ADMIN_USER: ("system:masters",),
        "system:kube-controller-manager": (),
        "system:kube-scheduler": (),
        "portal-kwok": ("system:masters",),  # the fake kubelet writes every node's and pod's status
    }
    issued = {user: secrets.token_hex(24) for user in tokens}
    (pki / "tokens.csv").write_text(
        "".join(
            f"{issued[user]},{user},{user}" + (f',"{",".join(groups)}"' if groups else "") + "\n"
            for user, groups in tokens.items()
        )
    )
    (pki / "tokens.csv").chmod(0o600)
    kubeconfigs = {}
    for user, file in (
        (ADMIN_USER, "kubeconfig"),
        ("system:kube-controller-manager", "controller-manager.kubeconfig"),
        ("system:kube-scheduler", "scheduler.kubeconfig"),
        ("portal-kwok", "kwok.kubeconfig"),
    ):
        kubeconfigs[user] = state / file
        _kubeconfig(state / file, server, pki / "ca.crt", user, issued[user])
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
    bin = built.bin
    pod_cidr = cluster.pod_cidr

    def launch(name: str, argv: list[str]) -> Component:
        component = _start(state, name, argv)
        cluster.components.append(component)
        cluster.save()
        return component

    try:
        progress(f"starting etcd {built.versions.etcd}")
        etcd = launch(
            "etcd",
            [
                str(bin / "etcd"),
                "--name=portal",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-cluster=portal=http://127.0.0.1:{ports['etcd-peer']}",
                "--log-level=warn",
                # a throwaway test store: no fsync on a disk shared with other builds
                "--unsafe-no-fsync",
            ],
        )
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        _wait("etcd", lambda: _http_ok(f"{etcd_url}/health"), Path(etcd.log), etcd.pid, state)

        (pki / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY, indent=2))
        progress(f"starting kube-apiserver {built.versions.kubernetes} on {server}")
        apiserver = launch(
            "kube-apiserver",
            [
                str(bin / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--cert-dir={state / 'certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                # aggregated-API style front proxy headers, trusted from our CA only (the
                # controller-manager and scheduler read this CA to delegate authentication)
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # the default admission plugins (PodSecurity among them) stay on
                "--allow-privileged=false",
                # the `kubernetes` Service would need a non-loopback address for its endpoints
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--kubelet-preferred-address-types=InternalIP",
                f"--audit-policy-file={pki / 'audit-policy.json'}",
                f"--audit-log-path={cluster.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
            ],
        )
        _wait(
            "kube-apiserver",
            lambda: _http_ok(f"{server}/readyz", cluster.token, cluster.ca),
            Path(apiserver.log),
            apiserver.pid,
            state,
        )

        progress("starting kube-controller-manager and kube-scheduler")
        cm_config = kubeconfigs["system:kube-controller-manager"]
        manager = launch(
            "kube-controller-manager",
            [
                str(bin / "kube-controller-manager"),
                f"--kubeconfig={cm_config}",
                f"--authentication-kubeconfig={cm_config}",
                f"--authorization-kubeconfig={cm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller-manager']}",
                f"--cert-dir={state / 'certs'}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        sched_config = kubeconfigs["system:kube-scheduler"]
        scheduler = launch(
            "kube-scheduler",
            [
                str(bin / "kube-scheduler"),
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={state / 'certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        for component, port in ((manager, "controller-manager"), (scheduler, "scheduler")):
            _wait(
                component.name,
                lambda port=port: _http_ok(f"https://127.0.0.1:{ports[port]}/healthz"),  # type: ignore[misc]
                Path(component.log),
                component.pid,
                state,
            )

        progress(f"registering node {NODE_NAME} (pod CIDR {pod_cidr}) and starting kwok")
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_ALLOCATABLE},
        }
        code, body = cluster.request("POST", "/api/v1/nodes", node)
        if code not in (201, 409):
            raise ClusterError(f"creating node {NODE_NAME} failed: HTTP {code}: {body}")
        # kwok's Logs objects (one per pod whose log a runtime writes): the CRD first
        kubectl = [str(bin / "kubectl"), f"--kubeconfig={cluster.kubeconfig}"]
        for crd in sorted(built.crds.glob("*.yaml")):
            _run_checked([*kubectl, "apply", "--server-side", "-f", str(crd)], "installing a CRD")
        _run_checked(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
            "waiting for kwok's CRDs",
        )
        kwok = launch(
            "kwok",
            [
                str(bin / "kwok"),
                f"--kubeconfig={kubeconfigs['portal-kwok']}",
                f"--manage-single-node={NODE_NAME}",
                f"--cidr={pod_cidr}",
                "--node-ip=127.0.0.1",
                f"--node-port={ports['kwok']}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                # renew the node's Lease like a kubelet (without it the node lifecycle controller
                # marks the node NotReady, and with it every pod)
                "--node-lease-duration-seconds=40",
                *(f"--config={stage}" for stage in sorted(built.stages.glob("*.yaml"))),
                *(f"--config={stage}" for stage in sorted(RUNTIME_STAGES.glob("*.yaml"))),
                "--enable-crds=Logs",
            ],
        )
        _wait("kwok (node Ready)", cluster.ready, Path(kwok.log), kwok.pid, state)

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
    with _locked(state / ".lock"):
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
