#!/usr/bin/env python3
"""The control plane's binaries, built from Go modules: ``scripts/cluster.py build`` and ``pin``.

Two small wrapper modules beside this file (``cluster/kubernetes`` and ``cluster/kwok``: a
generated ``go.mod`` and ``go.sum`` each, no source) pin kube-apiserver, kube-controller-manager,
kube-scheduler and kubectl from one ``k8s.io/kubernetes`` release, etcd at the version that
release pins, and kwok; a third (``cluster/prometheus``) the data plane's Prometheus. They are
built once into ``~/.cache/portal-cluster/<hash of the pins, the Go version and the build
flags>/`` and reused until a pin changes. Standard library only (and the ``go`` command).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gobuild  # scripts/gobuild.py, beside this file

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


class ClusterError(Exception):
    """A one-line, user-facing failure: what failed and where to look."""


def say(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


GO = gobuild.Go(ClusterError, say)


# --------------------------------------------------------------------------------------------
# Pins: the wrapper modules
# --------------------------------------------------------------------------------------------


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
        go = GO.run(["env", "GOVERSION"], MODULES).strip()
        return cls(
            kubernetes=_required(KUBERNETES_MODULE / "go.mod", "k8s.io/kubernetes"),
            etcd=_required(KUBERNETES_MODULE / "go.mod", "go.etcd.io/etcd/server/v3"),
            kwok=_required(KWOK_MODULE / "go.mod", "sigs.k8s.io/kwok"),
            go=go,
        )


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
        *gobuild.directives(release_gomod),
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
        *gobuild.directives(release_gomod),
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
            for line in gobuild.directives(release_gomod)
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
        info = GO.download(module, version)
        path.mkdir(parents=True, exist_ok=True)
        (path / "go.mod").write_text(render(version, Path(info["GoMod"]).read_text()))
        (path / "go.sum").unlink(missing_ok=True)
        env = gobuild.go_env()
        env["GOFLAGS"] = env["GOFLAGS"].replace("-mod=readonly", "")
        GO.run(["mod", "tidy"], path, env)
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
    date = GO.run(["list", "-m", "-f", "{{.Time}}", "k8s.io/kubernetes"], KUBERNETES_MODULE).strip()
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


def _build_logged(
    label: str, module: Path, args: list[str], tools: dict[str, str], log: Path
) -> None:
    """One ``go build -v`` of ``tools`` in ``module``: a progress line every 20 s, the
    compiler's errors on failure."""
    started = time.monotonic()
    total = GO.packages(module, *tools)
    GO.build_logged(f"building {label}", ["go", *args], module, None, log, total=total)
    say(f"[{gobuild.clock(time.monotonic() - started)}] {label}: built")


def build(force: bool = False) -> Build:
    """The pinned binaries, compiled once into the cache (a lock keeps parallel callers apart)."""
    versions = Versions.pinned()
    root = CACHE_ROOT / cache_key(versions)
    result = Build(root, versions)
    if result.complete() and not force:
        return result
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    lock = CACHE_ROOT / f"{root.name}.lock"
    with GO.locked(lock, f"waiting for another process building the same pins ({lock})"):
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
            GO.run(["mod", "download"], module)
            say(f"[{gobuild.clock(time.monotonic() - t0)}] modules of {module.name} downloaded")
            label = ", ".join(tools.values())
            args = _build_args(flags[module], tools, tmp / "bin")
            _build_logged(label, module, args, tools, log)
            for package, name in tools.items():
                # go names a binary after the path's last element, less a /vN suffix
                default = re.sub(r"/v\d+$", "", package).rsplit("/", 1)[-1]
                if default != name:
                    (tmp / "bin" / default).rename(tmp / "bin" / name)
        kwok_dir = _kwok_dir()
        (tmp / "stages").mkdir()
        for stage in KWOK_STAGES:
            shutil.copy(kwok_dir / stage, tmp / "stages" / Path(stage).name)
        copy_crds(tmp / "crds", kwok_dir)
        seconds = time.monotonic() - started
        (tmp / "build.json").write_text(
            json.dumps({"versions": asdict(versions), "seconds": round(seconds, 1)}, indent=2)
        )
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        say(f"[{gobuild.clock(seconds)}] control plane built: {root / 'bin'}")
    return result


def _kwok_dir() -> Path:
    return Path(GO.run(["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"], KWOK_MODULE).strip())


def copy_crds(into: Path, kwok_dir: Path | None = None) -> None:
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
    go = GO.run(["env", "GOVERSION"], MODULES).strip()
    date = GO.run(
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
    with GO.locked(root.with_name(root.name + ".lock"), f"waiting for another build of {root}"):
        if binary.exists() and not force:
            return binary
        started = time.monotonic()
        say(f"building Prometheus {release} into {root} (once; a first build takes minutes)")
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        GO.run(["mod", "download"], PROMETHEUS_MODULE)
        args = _build_args(ldflags, PROMETHEUS_TOOLS, tmp / "bin")
        _build_logged("prometheus", PROMETHEUS_MODULE, args, PROMETHEUS_TOOLS, tmp / "build.log")
        seconds = time.monotonic() - started
        (tmp / "build.json").write_text(json.dumps({"version": release, "seconds": seconds}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        say(f"[{gobuild.clock(seconds)}] Prometheus built: {binary}")
    return binary
