"""Run the Pulumi program (``__main__.py``) offline and capture what it would create.

There is no Pulumi engine here: the Pulumi runtime's mocks stand in for it. A recording monitor
captures every resource registration with its inputs (secrets unwrapped, and where they were),
its explicit dependencies (``depends_on``), its ``ignore_changes`` and its parent; the stack
outputs are resolved at the end. ``components.render`` writes the captured Kubernetes objects as
manifests; the tests assert on them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import runpy
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pulumi
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_pulumi_func

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROGRAM = PROJECT_DIR / "__main__.py"
PROJECT = "portal"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"  # noqa: S105 - a type token

# How Pulumi's resource protocol marks a secret value: an object whose signature key holds the
# secret signature, the value beside it.
_SIG = "4dabf18193072939515e22adb298388d"
_SECRET = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 - a protocol marker
T = TypeVar("T")

KIND_ORDER = (
    "Namespace",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "ConfigMap",
    "Service",
    "StatefulSet",
    "Deployment",
    "Job",
    "Ingress",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
)


def _plain(value: Any, path: str, secrets: list[str]) -> Any:
    """``value`` with secret wrappers removed (their paths recorded) and whole floats as ints
    (the mocks hand numbers back as floats; Kubernetes schemas want integers)."""
    if isinstance(value, dict):
        if value.get(_SIG) == _SECRET:
            secrets.append(path or "/")
            return _plain(value.get("value"), path, secrets)
        return {k: _plain(v, f"{path}/{k}", secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{path}/{i}", secrets) for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class Captured:
    """One resource registration."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    secret_paths: list[str]
    """Paths (``/stringData``...) of inputs that reached the engine as secrets."""
    dependencies: list[str]
    """URNs this resource explicitly depends on (``depends_on``)."""
    ignore_changes: list[str]
    delete_before_replace: bool

    @property
    def is_kubernetes(self) -> bool:
        return self.type.startswith("kubernetes:")

    @property
    def kind(self) -> str:
        return self.type.rsplit(":", 1)[-1]

    @property
    def object_name(self) -> str:
        return str(self.inputs.get("metadata", {}).get("name", ""))

    def manifest(self) -> dict[str, Any]:
        """The Kubernetes object as it would be applied (``apiVersion`` and ``kind`` first)."""
        head = {"apiVersion": self.inputs["apiVersion"], "kind": self.inputs["kind"]}
        return {**head, **{k: v for k, v in self.inputs.items() if k not in head}}


@dataclass
class ProgramRun:
    stack: str
    resources: list[Captured]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    seconds: float
    passwords: dict[str, str] = field(default_factory=dict)
    """Resource name -> the value the mocks returned as that RandomPassword's result."""

    def kubernetes(self) -> list[Captured]:
        """The Kubernetes objects in apply order (by kind, then name: stable across runs)."""
        objects = [r for r in self.resources if r.is_kubernetes]
        rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
        return sorted(objects, key=lambda r: (rank.get(r.kind, len(rank)), r.object_name))

    def get(self, kind: str, name: str) -> Captured:
        """The Kubernetes object ``kind``/``name``; raises ``KeyError`` naming what exists."""
        for r in self.resources:
            if r.is_kubernetes and r.kind == kind and r.object_name == name:
                return r
        have = sorted(r.object_name for r in self.resources if r.is_kubernetes and r.kind == kind)
        raise KeyError(f"no {kind} {name!r} was registered; {kind} objects: {have}")

    def find(self, kind: str) -> list[Captured]:
        return [r for r in self.resources if r.is_kubernetes and r.kind == kind]

    def by_urn(self, urn: str) -> Captured:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)


class PlatformMocks(mocks.Mocks):
    """Echo every resource's inputs as its outputs; give RandomPasswords a recognisable result."""

    def __init__(self, password: Callable[[str], str]) -> None:
        self.password = password
        self.passwords: dict[str, str] = {}

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        outputs = dict(args.inputs)
        if args.typ == RANDOM_PASSWORD:
            self.passwords[args.name] = outputs["result"] = self.password(args.name)
        return f"{args.name}-id", outputs

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(mocks.MockMonitor):
    """The runtime's mock monitor, also recording each registration request."""

    def __init__(self, platform_mocks: PlatformMocks) -> None:
        super().__init__(platform_mocks)
        self.captured: list[Captured] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.additionalSecretOutputs:
            # The engine marks these outputs secret (RandomPassword.result...); the runtime's
            # mock monitor does not, so do it here: a password must stay secret downstream.
            state = rpc.deserialize_properties(response.object)
            for key in request.additionalSecretOutputs:
                if key in state:
                    state[key] = {_SIG: _SECRET, "value": state[key]}
            marked = type(response.object)()  # the protocol's Struct
            marked.update(state)
            response = resource_pb2.RegisterResourceResponse(
                urn=response.urn, id=response.id, object=marked
            )
        if request.type != "pulumi:pulumi:Stack":
            raw = rpc.deserialize_properties(request.object)
            secrets: list[str] = []
            inputs = _plain(raw, "", secrets)
            self.captured.append(
                Captured(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    custom=bool(request.custom),
                    inputs=inputs,
                    secret_paths=secrets,
                    dependencies=list(request.dependencies),
                    ignore_changes=list(request.ignoreChanges),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                )
            )
        return response


def config_map(values: Mapping[str, Any]) -> dict[str, str]:
    """``portal:`` keys as the Pulumi CLI hands them to a program: strings, objects as JSON."""
    return {
        f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
    }


def default_password(name: str) -> str:
    return f"generated-at-deploy-time-{name}"


def run_program(
    stack: str,
    values: Mapping[str, Any],
    secrets: Mapping[str, Any] | None = None,
    *,
    program: Path = PROGRAM,
    password: Callable[[str], str] = default_password,
) -> ProgramRun:
    """Run ``program`` for ``stack`` with the ``portal:`` config ``values`` (and secret
    ``secrets``) under mocks; raise whatever the program raises (``pulumi.RunError`` for a bad
    config). Each run is isolated in a context of its own."""
    return contextvars.copy_context().run(
        _run, stack, values, dict(secrets or {}), program, password
    )


def _complete(awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, on the thread's event loop (not running: ``_run`` drives it)."""
    return asyncio.get_event_loop_policy().get_event_loop().run_until_complete(awaitable)


def _run(
    stack: str,
    values: Mapping[str, Any],
    secrets: dict[str, Any],
    program: Path,
    password: Callable[[str], str],
) -> ProgramRun:
    # The Pulumi runtime awaits on the thread's current event loop; code that ran before (an
    # asyncio.run, a test framework) may have closed it or left none.
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if loop.is_closed():
            raise RuntimeError("closed")
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    settings.ROOT.set(None)
    platform_mocks = PlatformMocks(password)
    monitor = RecordingMonitor(platform_mocks)
    config = {**config_map(values), **config_map(secrets)}
    pulumi.runtime.set_all_config(config, [f"{PROJECT}:{key}" for key in secrets])
    mocks.set_mocks(platform_mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    settings.SETTINGS.outputs.clear()
    started = time.perf_counter()

    def program_main() -> None:
        runpy.run_path(str(program), run_name="__main__")

    _complete(run_pulumi_func(program_main))
    root = settings.get_root_resource()
    exported: dict[str, Any] = getattr(root, "outputs", {})
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    for key, value in exported.items():
        output = pulumi.Output.from_input(value)
        outputs[key] = _complete(output.future())
        if _complete(output.is_secret()):
            secret_outputs.add(key)
    return ProgramRun(
        stack=stack,
        resources=monitor.captured,
        outputs=outputs,
        secret_outputs=secret_outputs,
        seconds=time.perf_counter() - started,
        passwords=dict(platform_mocks.passwords),
    )


def walk(value: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """Every leaf of a nested mapping/list with its path (``/spec/template/...``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}/{i}")
    else:
        yield path, value
