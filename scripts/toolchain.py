#!/usr/bin/env python3
"""The Pulumi engine and its providers, built on this machine from Go modules and run offline.

    scripts/toolchain.py build            # compile what is missing (cached by pin hash), print bin/
    scripts/toolchain.py bin              # the bin folder only (builds first if needed)
    scripts/toolchain.py env [--state D]  # shell exports for running `pulumi` offline (for `eval`)
    scripts/toolchain.py versions         # what each binary is, and what the Python SDKs ask for
    scripts/toolchain.py pin              # regenerate the wrapper modules from the pins below

Each part comes from a small wrapper module beside this file (``toolchain/<part>``: a generated
``go.mod`` and ``go.sum``, and for a provider a few lines of our own Go calling the provider's entry
point). Files the upstream build generates and the module lacks (the provider's embedded schema)
are produced at build time by the provider's own generator, from the module. The random provider
is the Terraform random provider served through pulumi-terraform-bridge: its wrapper holds our
short provider definition (the pulumi_random SDK's tokens) and the bridge's schema generator
writes its schema from that definition at build time.

Every part is built once into ``~/.cache/portal-toolchain/parts/<part>-<hash>/`` (hash of its
wrapper files, the Go version and the build recipe) and the binaries of one set of pins are
linked into ``~/.cache/portal-toolchain/<hash of all of them>/bin``: put that folder on PATH.
The engine finds the providers there (a plugin on PATH wins over the plugin cache and serves
whatever version the SDK asks for, see ``versions``); ``offline_env`` also links each one into the
plugin cache under the version it reports. ``offline_env`` is the environment for running
without the network: file backend, passphrase secrets, no plugin downloads, no update check.
Only the standard library and the ``go`` command are used, so plain ``python3`` runs this before
any virtualenv exists; the tests import it as a module.

The Python language host (module github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3)
is not served by the Go module proxy at any version (it answers 403 "This module version is not
available"), so it is not a part; Python programs run on this engine through the Automation API,
whose language host is the Python SDK itself (``scripts/stack.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gobuild  # scripts/gobuild.py, beside this file

REPO = Path(__file__).resolve().parent.parent
MODULES = Path(__file__).resolve().parent / "toolchain"
CACHE_ROOT = Path(
    os.environ.get("PORTAL_TOOLCHAIN_CACHE", "~/.cache/portal-toolchain")
).expanduser()
DEFAULT_STATE = REPO / ".portal" / "pulumi"

# Bump when the way a part is built changes in a way its wrapper files do not show.
RECIPE = 1
BUILD_FLAGS = ("-trimpath",)
LDFLAGS = ("-s", "-w")


class ToolchainError(Exception):
    """A one-line, user-facing failure: which part failed and where to look."""


def say(message: str) -> None:
    print(f"toolchain: {message}", file=sys.stderr, flush=True)


GO = gobuild.Go(ToolchainError, say)


# --------------------------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One binary built from one wrapper module."""

    name: str
    """The wrapper module's folder under ``toolchain/`` and the name progress lines show."""
    binary: str
    """The file written to ``bin/`` (the engine finds plugins by this name)."""
    title: str
    """What it is, for people."""
    version: str
    """The release this is: stamped into the binary, which reports it to the engine."""
    version_var: str
    """The linker variable that carries ``version``."""
    package: str
    """What ``go build`` builds, from the wrapper module's folder."""
    requires: Mapping[str, str]
    """Modules the wrapper requires (path -> version); the first is the release's own module."""
    local_replaces: Mapping[str, str] = field(default_factory=dict)
    """Upstream ``replace X => ../dir`` lines, and the served version of X that stands for them."""
    dropped_replaces: tuple[str, ...] = ()
    """Upstream ``replace X => ../dir`` lines this build does without (X only serves the
    upstream's own tests, or the wrapper requires a served X itself)."""
    replaces: Mapping[str, str] = field(default_factory=dict)
    """Our own ``replace`` lines (module -> "path version"); they win over the upstream's."""
    module: str = ""
    """The wrapper's module path (default ``portal.local/toolchain/<name>``)."""
    tool: bool = False
    """The package is a ``tool`` of the wrapper (no ``main.go`` of ours)."""
    tags: tuple[str, ...] = ()
    prepare: Callable[[Part, Path, Mapping[str, str], Path], None] | None = None
    """Writes the generated files the module lacks into the build folder (before ``go build``)."""


def _kubernetes_schema(part: Part, src: Path, env: Mapping[str, str], log: Path) -> None:
    """The provider's ``schema-embed.json`` and ``terraform-mapping-embed.json``: its own
    ``generate.go`` run on the ``schema.json`` and ``terraform-mapping.json`` the module ships."""
    provider = GO.module_dir(src, "github.com/pulumi/pulumi-kubernetes/provider/v4", env)
    cmd = provider / "cmd" / "pulumi-resource-kubernetes"
    gen = src / "gen"
    gen.mkdir(exist_ok=True)
    for name in ("schema.json", "terraform-mapping.json"):
        shutil.copyfile(cmd / name, src / name)
    shutil.copyfile(cmd / "generate.go", gen / "generate.go")
    GO.build_logged(
        f"{part.name}: schema generator",
        ["go", "run", "./gen/generate.go"],
        src,
        {**env, "VERSION": part.version},
        log,
    )
    for name in ("schema.json", "terraform-mapping.json"):
        (src / name).unlink()
    shutil.rmtree(gen)


def _random_schema(part: Part, src: Path, env: Mapping[str, str], log: Path) -> None:
    """The provider's ``schema.json`` and ``bridge-metadata.json``: the bridge's schema generator
    (tfgen), built from our provider definition with the ``tfgen`` tag, run on it."""
    gen = src / "gen"
    gen.mkdir(exist_ok=True)
    total = len(GO.run(["list", "-deps", "-tags", "tfgen", "."], src, env).split())
    tfgen = gen / "pulumi-tfgen-random"
    GO.build_logged(
        f"{part.name}: schema generator build",
        ["go", "build", "-v", *BUILD_FLAGS, "-tags", "tfgen", "-o", str(tfgen), "."],
        src,
        env,
        log,
        total=total,
    )
    GO.build_logged(
        f"{part.name}: schema generator",
        [str(tfgen), "schema", "--out", str(gen), "--skip-docs", "--skip-examples"],
        src,
        {**env, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        log,
    )
    schema = json.loads((gen / "schema.json").read_text())
    schema["version"] = part.version  # tfgen leaves it out; the engine reads it from GetSchema
    (src / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    shutil.copyfile(gen / "bridge-metadata.json", src / "bridge-metadata.json")
    shutil.rmtree(gen)


PULUMI_VERSION = "3.274.0"
KUBERNETES_VERSION = "4.25.0"
# The provider module has no tags of its own: this pseudo-version is the commit of release
# v4.25.0 (f47bc2d6f199), the only version of github.com/pulumi/pulumi-kubernetes/provider/v4
# the module proxy serves.
KUBERNETES_PSEUDO = "v4.0.0-20260115033456-f47bc2d6f199"

# The random provider is the Terraform random provider, whose module (path
# github.com/terraform-providers/terraform-provider-random, no tags the proxy accepts) is served
# at this pseudo-version: release v3.9.0 (f8d869dc98d9), the commit pulumi-random 4.21.x bridges.
# pulumi-random's own provider module is not served, so this is our build of the same provider
# under the same tokens: the schema it generates is pulumi-random 4.21.4's but for doc text.
RANDOM_VERSION = "4.21.4"
RANDOM_TF_PSEUDO = "v1.3.2-0.20260513075824-f8d869dc98d9"
BRIDGE_VERSION = "v3.120.0"  # the newest pulumi-terraform-bridge the proxy serves
# The bridge builds against Pulumi's fork of terraform-plugin-sdk; the fork its go.mod names
# predates terraform-plugin-go v0.31 (which the random provider requires) and does not compile
# with it. This later commit of the fork (the one pulumi-random 4.21.x builds with) does.
PLUGIN_SDK_FORK = "github.com/pulumi/terraform-plugin-sdk/v2 v2.0.0-20260318212141-5525259d096b"

PARTS: tuple[Part, ...] = (
    Part(
        name="pulumi",
        binary="pulumi",
        title=f"Pulumi CLI v{PULUMI_VERSION}",
        version=f"v{PULUMI_VERSION}",
        version_var="github.com/pulumi/pulumi/sdk/v3/go/common/version.Version",
        package="github.com/pulumi/pulumi/pkg/v3/cmd/pulumi",
        requires={
            "github.com/pulumi/pulumi/pkg/v3": f"v{PULUMI_VERSION}",
            "github.com/pulumi/pulumi/sdk/v3": f"v{PULUMI_VERSION}",
        },
        local_replaces={"github.com/pulumi/pulumi/sdk/v3": f"v{PULUMI_VERSION}"},
        tool=True,
        # as the release build: pure-Go os/user, and gRPC without x/net/trace (smaller binary)
        tags=("osusergo", "grpcnotrace"),
    ),
    Part(
        name="kubernetes",
        binary="pulumi-resource-kubernetes",
        title=f"Kubernetes provider v{KUBERNETES_VERSION}",
        version=KUBERNETES_VERSION,
        version_var="github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version",
        package=".",
        requires={
            "github.com/pulumi/pulumi-kubernetes/provider/v4": KUBERNETES_PSEUDO,
            "github.com/pulumi/pulumi-kubernetes/sdk/v4": f"v{KUBERNETES_VERSION}",
        },
        local_replaces={"github.com/pulumi/pulumi-kubernetes/sdk/v4": f"v{KUBERNETES_VERSION}"},
        prepare=_kubernetes_schema,
    ),
    Part(
        name="random",
        binary="pulumi-resource-random",
        title=(
            f"Random provider {RANDOM_VERSION} (terraform-provider-random v3.9.0 through "
            f"pulumi-terraform-bridge {BRIDGE_VERSION})"
        ),
        version=RANDOM_VERSION,
        version_var="main.version",
        package=".",
        requires={
            "github.com/pulumi/pulumi-terraform-bridge/v3": BRIDGE_VERSION,
            "github.com/terraform-providers/terraform-provider-random": RANDOM_TF_PSEUDO,
        },
        # the bridge's tests replace the Terraform tls and random providers with vendored copies
        dropped_replaces=(
            "github.com/hashicorp/terraform-provider-tls",
            "github.com/terraform-providers/terraform-provider-random",
        ),
        replaces={"github.com/hashicorp/terraform-plugin-sdk/v2": PLUGIN_SDK_FORK},
        # under the Terraform provider's path, so that it may import its internal/provider
        module="github.com/terraform-providers/terraform-provider-random/pulumi",
        prepare=_random_schema,
    ),
    # The control plane's binaries are built by scripts/cluster.py into their own cache; a further
    # engine part (the language host, if the proxy serves it later) is one more Part here.
)

# The plugin each Python SDK package asks the engine for (pulumi-plugin.json in its wheel).
SDK_PLUGINS = {"pulumi_kubernetes": "kubernetes", "pulumi_random": "random"}

# Binaries the project would build and the proxy does not serve at any version (403 "This module
# version is not available" for the version list and for every release commit tried). The random
# provider's own module (github.com/pulumi/pulumi-random/provider/v4) is not served either: the
# random part above is built from the Terraform provider it bridges instead.
NOT_SERVED = {
    "pulumi-language-python": "github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3",
}


# --------------------------------------------------------------------------------------------
# Go
# --------------------------------------------------------------------------------------------


def go_version() -> str:
    return GO.version(REPO)


# --------------------------------------------------------------------------------------------
# Pins: the wrapper modules
# --------------------------------------------------------------------------------------------


def _header(part: Part) -> str:
    lines = [
        "// Generated by `scripts/toolchain.py pin` from the release's own go.mod: do not edit.",
        f"// {part.title}: " + ", ".join(f"{m} {v}" for m, v in part.requires.items()) + ".",
    ]
    if part.local_replaces:
        lines.append(
            "// Upstream replaces "
            + ", ".join(
                f"{m} with its own folder ({v} here)" for m, v in part.local_replaces.items()
            )
            + "; its other replace lines are copied."
        )
    if part.dropped_replaces:
        lines.append(
            "// Upstream replace lines by its own folders not taken: "
            + ", ".join(part.dropped_replaces)
            + "."
        )
    if part.replaces:
        lines.append(
            "// Replaced here instead of upstream's line: "
            + ", ".join(f"{m} => {v}" for m, v in part.replaces.items())
            + "."
        )
    return "\n".join(lines) + "\n"


def _upstream_replaces(part: Part, scratch: Path) -> list[str]:
    """The release's own ``replace`` lines: module replacements are carried over (ours in
    ``replaces`` win); a replacement by a local folder must be named in ``local_replaces`` (the
    served version standing for it) or ``dropped_replaces``."""
    release, version = next(iter(part.requires.items()))
    info = json.loads(GO.run(["mod", "download", "-json", f"{release}@{version}"], scratch))
    gomod = json.loads(GO.run(["mod", "edit", "-json", info["GoMod"]], scratch))
    lines = []
    for replace in gomod.get("Replace") or []:
        old, new = replace["Old"], replace["New"]
        if old["Path"] in part.replaces:
            continue
        if not new.get("Version"):  # a folder of the upstream repository
            if old["Path"] in part.dropped_replaces:
                continue
            if old["Path"] not in part.local_replaces:
                raise ToolchainError(
                    f"{release}@{version} replaces {old['Path']} with its folder {new['Path']}: "
                    f"name the served version that stands for it in {part.name}'s local_replaces"
                )
            continue
        left = old["Path"] + (f" {old['Version']}" if old.get("Version") else "")
        lines.append(f"replace {left} => {new['Path']} {new['Version']}")
    lines += [f"replace {m} => {v}" for m, v in part.replaces.items()]
    return lines


def pin_part(part: Part) -> None:
    """Regenerate ``toolchain/<part>/go.mod`` and ``go.sum`` (downloads from the module proxy)."""
    target = MODULES / part.name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"toolchain-pin-{part.name}-") as tmp:
        scratch = Path(tmp)
        env = {**gobuild.go_env(), "GOFLAGS": "-mod=mod -buildvcs=false"}
        text = f"module {part.module or 'portal.local/toolchain/' + part.name}\n\ngo 1.26\n\n"
        if part.tool:
            text += f"tool {part.package}\n\n"
        text += "require (\n" + "".join(f"\t{m} {v}\n" for m, v in part.requires.items()) + ")\n"
        replaces = _upstream_replaces(part, scratch)
        if replaces:
            text += "\n" + "\n".join(replaces) + "\n"
        (scratch / "go.mod").write_text(text)
        for own in target.glob("*.go"):  # our own sources; what they embed is generated later
            shutil.copyfile(own, scratch / own.name)
            for embed in re.findall(r"//go:embed (\S+)", own.read_text()):
                (scratch / embed).write_text("{}")
        GO.run(["mod", "tidy"], scratch, env)
        (target / "go.mod").write_text(_header(part) + (scratch / "go.mod").read_text())
        shutil.copyfile(scratch / "go.sum", target / "go.sum")
    say(f"pinned {part.name}: {target / 'go.mod'}")


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _wrapper_files(part: Part) -> list[Path]:
    folder = MODULES / part.name
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not any(p.name == "go.mod" for p in files):
        raise ToolchainError(f"{folder}/go.mod is missing: run `scripts/toolchain.py pin`")
    return files


def part_key(part: Part, go: str) -> str:
    digest = hashlib.sha256()
    recipe = {
        "recipe": RECIPE,
        "go": go,
        "version": part.version,
        "version_var": part.version_var,
        "package": part.package,
        "tags": part.tags,
        "flags": BUILD_FLAGS,
        "ldflags": LDFLAGS,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for path in _wrapper_files(part):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Toolchain:
    """One set of pins built: ``bin`` holds every binary; ``versions`` what each one is."""

    root: Path
    parts: tuple[Part, ...]

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def pulumi(self) -> Path:
        return self.bin / "pulumi"

    def complete(self) -> bool:
        return (self.root / "toolchain.json").exists() and all(
            (self.bin / p.binary).exists() for p in self.parts
        )

    def versions(self) -> dict[str, str]:
        data: dict[str, Any] = json.loads((self.root / "toolchain.json").read_text())
        return {p["binary"]: p["version"] for p in data["parts"]}


def locate(parts: Sequence[Part] = PARTS) -> Toolchain:
    go = go_version()
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.name}-{part_key(part, go)}\n".encode())
    return Toolchain(CACHE_ROOT / digest.hexdigest()[:16], tuple(parts))


def _build_part(part: Part, go: str) -> tuple[Path, float]:
    """The part's binary in its own cache folder, built there if missing."""
    root = CACHE_ROOT / "parts" / f"{part.name}-{part_key(part, go)}"
    binary = root / part.binary
    if binary.exists():
        return binary, 0.0
    started = time.monotonic()
    say(f"building {part.title} into {root}")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    src = tmp / "src"
    src.mkdir(parents=True)
    for path in _wrapper_files(part):
        shutil.copyfile(path, src / path.name)
    log = tmp / "build.log"
    env = gobuild.go_env()
    try:
        t0 = time.monotonic()
        GO.build_logged(f"{part.name}: go mod download", ["go", "mod", "download"], src, env, log)
        say(f"[{gobuild.clock(time.monotonic() - t0)}] {part.name}: modules downloaded")
        if part.prepare is not None:
            t0 = time.monotonic()
            part.prepare(part, src, env, log)
            say(f"[{gobuild.clock(time.monotonic() - t0)}] {part.name}: generated files written")
        total = len(
            GO.run(
                [
                    "list",
                    "-deps",
                    *(("-tags", ",".join(part.tags)) if part.tags else ()),
                    part.package,
                ],
                src,
                env,
            ).split()
        )
        ldflags = [*LDFLAGS, "-X", f"{part.version_var}={part.version}"]
        argv = ["go", "build", "-v", *BUILD_FLAGS]
        if part.tags:
            argv += ["-tags", ",".join(part.tags)]
        argv += ["-ldflags", " ".join(ldflags), "-o", str(tmp / part.binary), part.package]
        GO.build_logged(f"{part.name}: go build", argv, src, env, log, total=total)
    except ToolchainError as exc:
        raise ToolchainError(f"building {part.title} failed: {exc}") from exc
    seconds = time.monotonic() - started
    (tmp / "part.json").write_text(
        json.dumps(
            {"name": part.name, "version": part.version, "go": go, "seconds": round(seconds, 1)},
            indent=2,
        )
    )
    shutil.rmtree(tmp / "src")  # the module cache keeps the sources; the build cache the objects
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    say(f"[{gobuild.clock(seconds)}] {part.name}: built {binary}")
    return binary, seconds


def build(parts: Sequence[Part] = PARTS, force: bool = False) -> Toolchain:
    """Every part, compiled once into the cache (a lock keeps parallel callers apart), linked
    into one ``bin`` folder."""
    toolchain = locate(parts)
    if toolchain.complete() and not force:
        return toolchain
    with gobuild.locked(CACHE_ROOT / "build.lock"):
        if toolchain.complete() and not force:
            return toolchain  # another process built it while we waited
        go = go_version()
        started = time.monotonic()
        built = []
        for part in parts:
            if force:
                shutil.rmtree(CACHE_ROOT / "parts" / f"{part.name}-{part_key(part, go)}", True)
            binary, seconds = _build_part(part, go)
            built.append((part, binary, seconds))
        tmp = toolchain.root.with_name(toolchain.root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        for part, binary, _ in built:
            target = tmp / "bin" / part.binary
            try:
                os.link(binary, target)
            except OSError:
                shutil.copy2(binary, target)
        record = {
            "go": go,
            "parts": [
                {
                    "name": part.name,
                    "binary": part.binary,
                    "title": part.title,
                    "version": part.version,
                    "modules": dict(part.requires),
                    "build_seconds": round(seconds, 1),
                }
                for part, _, seconds in built
            ],
        }
        (tmp / "toolchain.json").write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(toolchain.root, ignore_errors=True)
        tmp.rename(toolchain.root)
        if any(seconds for _, _, seconds in built):
            say(f"[{gobuild.clock(time.monotonic() - started)}] built {toolchain.bin}")
    return toolchain


# --------------------------------------------------------------------------------------------
# Running offline
# --------------------------------------------------------------------------------------------


def offline_env(
    toolchain: Toolchain,
    state: Path,
    passphrase: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for running ``pulumi`` with no network: the toolchain's ``bin`` first on
    PATH (the engine takes the providers from there), state and plugin home under ``state``, a
    ``file://`` backend, passphrase secrets, no plugin downloads and no update check.

    ``passphrase`` sets ``PULUMI_CONFIG_PASSPHRASE``; without it the caller's own passphrase
    variable (if any) is kept."""
    env = dict(os.environ if base is None else base)
    env.pop("PULUMI_IGNORE_AMBIENT_PLUGINS", None)  # the providers are found on PATH
    env.pop("PULUMI_ACCESS_TOKEN", None)
    path = env.get("PATH", "")
    env["PATH"] = str(toolchain.bin) + (os.pathsep + path if path else "")
    env["PULUMI_HOME"] = str(state / "home")
    env["PULUMI_BACKEND_URL"] = (state / "backend").resolve().as_uri()
    env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
    env["PULUMI_SKIP_CONFIRMATIONS"] = "true"
    if passphrase is not None:
        env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
        env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
    (state / "backend").mkdir(parents=True, exist_ok=True)
    install_plugins(toolchain, state / "home")
    return env


def install_plugins(toolchain: Toolchain, home: Path) -> None:
    """Each provider also in the plugin cache of ``home`` (``PULUMI_HOME``), under the version it
    reports (``plugins/resource-kubernetes-v4.25.0/pulumi-resource-kubernetes``, a link to the
    binary): commands that name a plugin version (``pulumi plugin ls``, ``pulumi package
    get-schema kubernetes@4.25.0``, a provider resource with that ``version``) find it there
    without a download. A version the SDK asks for that no build matches is served from PATH."""
    for part in toolchain.parts:
        if not part.binary.startswith("pulumi-resource-"):
            continue
        name = part.binary.removeprefix("pulumi-resource-")
        folder = home / "plugins" / f"resource-{name}-v{part.version.removeprefix('v')}"
        link = folder / part.binary
        if link.is_symlink() and link.resolve() == (toolchain.bin / part.binary).resolve():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(toolchain.bin / part.binary)


def _exports(toolchain: Toolchain, state: Path) -> str:
    env = offline_env(toolchain, state, base={"PATH": "$PATH"})
    lines = []
    for key in (
        "PATH",
        "PULUMI_HOME",
        "PULUMI_BACKEND_URL",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION",
        "PULUMI_SKIP_UPDATE_CHECK",
        "PULUMI_SKIP_CONFIRMATIONS",
    ):
        value = env[key]
        quoted = f'"{value}"' if key == "PATH" else shlex.quote(value)
        lines.append(f"export {key}={quoted}")
    lines.append("unset PULUMI_IGNORE_AMBIENT_PLUGINS")
    return "\n".join(lines)


def sdk_versions(python: Path | None = None) -> dict[str, str]:
    """What the installed Python SDK packages ask for: ``pulumi`` (the SDK's own version) and,
    for each provider package, the plugin version it requests (its ``pulumi-plugin.json``)."""
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "try:\n"
        "    out['pulumi'] = m.version('pulumi')\n"
        "except m.PackageNotFoundError:\n"
        "    pass\n"
        f"for pkg, plugin in {SDK_PLUGINS!r}.items():\n"
        "    try:\n"
        "        f = m.distribution(pkg).read_text(pkg + '/pulumi-plugin.json')\n"
        "    except m.PackageNotFoundError:\n"
        "        continue\n"
        "    want = json.loads(f or '{}').get('version', m.version(pkg))\n"
        "    out['pulumi-resource-' + plugin] = want\n"
        "print(json.dumps(out))\n"
    )
    interpreter = python or REPO / ".venv" / "bin" / "python"
    if not interpreter.exists():
        return {}
    proc = subprocess.run(
        [str(interpreter), "-c", code], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {}
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def describe(toolchain: Toolchain) -> str:
    """One line per binary: what was built and what the Python SDK asks for."""
    asked = sdk_versions()
    lines = []
    for part in toolchain.parts:
        line = f"{part.binary:<28} {part.version:<10} {part.title}"
        if part.binary in asked:
            want = asked[part.binary]
            sdk = "the Python SDK is" if part.binary == "pulumi" else "the Python SDK asks for"
            line += f"; {sdk} {want}"
            if part.binary.startswith("pulumi-resource-") and want != part.version.lstrip("v"):
                line += " (served from PATH)"
        lines.append(line)
    for binary, module in NOT_SERVED.items():
        line = f"{binary:<28} {'-':<10} not built: the Go module proxy serves no {module}"
        if binary in asked:
            line += f"; the Python SDK asks for {asked[binary]}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/toolchain.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="compile what is missing and print the bin folder")
    b.add_argument("--force", action="store_true", help="rebuild every part")
    sub.add_parser("bin", help="print the bin folder (building first if needed)")
    e = sub.add_parser("env", help="print shell exports for running pulumi offline")
    e.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"default {DEFAULT_STATE}")
    sub.add_parser("versions", help="what each binary is and what the Python SDKs ask for")
    sub.add_parser("pin", help="regenerate the wrapper modules (needs the module proxy)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pin":
            for part in PARTS:
                pin_part(part)
            return 0
        toolchain = build(force=getattr(args, "force", False))
        if args.command == "env":
            print(_exports(toolchain, args.state.resolve()))
        elif args.command == "versions":
            print(describe(toolchain))
        elif args.command == "bin":
            print(toolchain.bin)
        else:
            print(describe(toolchain), file=sys.stderr)
            say(
                'run pulumi offline with: eval "$(python3 scripts/toolchain.py env)" '
                "and a passphrase in PULUMI_CONFIG_PASSPHRASE"
            )
            print(toolchain.bin)
    except ToolchainError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
