"""``pulumi up | preview | refresh | destroy`` of the portal program on the engine built here.

    .venv/bin/python scripts/stack.py up --stack staging
    .venv/bin/python scripts/stack.py preview --stack staging --expect-no-changes
    .venv/bin/python scripts/stack.py destroy --stack staging
    .venv/bin/python scripts/stack.py volumes --stack staging   # before the first up: see below

The Pulumi CLI runs a Python program through its ``pulumi-language-python`` plugin, which cannot
be built here (the Go module proxy serves no version of its module). This runs the same
operations through Pulumi's Automation API instead: the real CLI (``scripts/toolchain.py``) runs
the engine, the providers, the state and the secrets, and asks the Python SDK's own language
runtime, in this process, to run the project's ``__main__.py``. Where the real language host
exists (any machine with a released Pulumi CLI), plain ``pulumi up -s staging`` does the same.

Offline, as ``scripts/toolchain.py env`` sets up: state and plugin home under ``--state``
(default ``.portal/pulumi``), a ``file://`` backend there, passphrase secrets (the passphrase from
``PULUMI_CONFIG_PASSPHRASE`` or ``PULUMI_CONFIG_PASSPHRASE_FILE``), no plugin downloads. The stack
is created when it does not exist yet. The Kubernetes provider reaches the cluster of
``KUBECONFIG`` (``make cluster-up`` prints the export line). The engine's output is printed as it
comes; exit 0 on success, 1 when the operation failed (the engine's error is printed), 2 on bad
usage. Runs in its own process: a program run sets the SDK's process-wide state.

``volumes`` is for a cluster without a storage provisioner (``make cluster-up``'s): it creates,
for each claim the stack's StatefulSets will make, a PersistentVolume bound in advance to that
claim (hostPath under ``/var/lib/portal-volumes``, reclaim policy Retain), as an operator of such
a cluster does; one a destroyed stack left Released is made anew, a Bound one is left alone.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

import toolchain  # scripts/toolchain.py, beside this file
from pulumi import automation as auto

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = ("up", "preview", "refresh", "destroy", "volumes")
VOLUME_ROOT = "/var/lib/portal-volumes"


def fail(message: str, code: int = 2) -> int:
    print(f"stack: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/stack.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("operation", choices=OPERATIONS)
    parser.add_argument("--stack", "-s", required=True, help="staging, prod, ...")
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO,
        help="the project folder: Pulumi.yaml, Pulumi.<stack>.yaml, __main__.py (default: repo)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=toolchain.DEFAULT_STATE,
        help=f"backend and plugin home (default {toolchain.DEFAULT_STATE})",
    )
    parser.add_argument(
        "--program",
        type=Path,
        help="run this file as the program instead of <dir>/__main__.py (the project stays --dir)",
    )
    parser.add_argument(
        "--expect-no-changes",
        action="store_true",
        help="up/preview/refresh: fail if anything would change",
    )
    parser.add_argument("--diff", action="store_true", help="show the detailed diff")
    args = parser.parse_args(argv)
    project = args.dir.resolve()
    program_file = (args.program or project / "__main__.py").resolve()
    for required in (project / "Pulumi.yaml", program_file):
        if not required.is_file():
            return fail(f"{required} is missing (--dir names the project folder)")
    if args.operation == "volumes":
        return volumes(args.stack, project)
    if not any(os.environ.get(f"PULUMI_CONFIG_PASSPHRASE{s}") for s in ("", "_FILE")):
        return fail("set PULUMI_CONFIG_PASSPHRASE (or _FILE): the stack's secrets are encrypted")
    try:
        built = toolchain.build()
    except toolchain.ToolchainError as exc:
        return fail(f"the Pulumi engine could not be built: {exc}", 1)
    os.environ.update(toolchain.offline_env(built, args.state.resolve()))
    try:
        run(
            args.operation,
            args.stack,
            project,
            program_file,
            built,
            expect_no_changes=args.expect_no_changes,
            diff=args.diff,
        )
    except auto.CommandError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


def run(
    operation: str,
    stack_name: str,
    project: Path,
    program_file: Path,
    built: toolchain.Toolchain,
    *,
    expect_no_changes: bool = False,
    diff: bool = False,
) -> auto.Stack:
    """One operation on the stack (created if missing) in ``project``, the engine's output
    printed as it comes, in the environment of this process (``toolchain.offline_env``). Raises
    ``auto.CommandError`` when the engine fails."""

    def program() -> None:
        sys.path.insert(0, str(program_file.parent))
        try:
            runpy.run_path(str(program_file), run_name="__main__")
        finally:
            sys.path.remove(str(program_file.parent))

    os.chdir(project)
    workspace = auto.LocalWorkspace(
        work_dir=str(project),
        program=program,
        pulumi_command=auto.PulumiCommand(root=str(built.root)),
    )
    stack = auto.Stack.create_or_select(stack_name, workspace)

    def out(line: str) -> None:
        print(line, flush=True)

    expect = expect_no_changes or None
    if operation == "up":
        stack.up(on_output=out, expect_no_changes=expect, diff=diff or None)
    elif operation == "preview":
        stack.preview(on_output=out, expect_no_changes=expect, diff=diff or None)
    elif operation == "refresh":
        stack.refresh(on_output=out, expect_no_changes=expect)
    elif operation == "destroy":
        stack.destroy(on_output=out)
    else:
        raise ValueError(f"unknown operation {operation!r}")
    return stack


def volumes(stack_name: str, project: Path) -> int:
    """One PersistentVolume per claim of the stack's StatefulSets, bound in advance."""
    sys.path.insert(0, str(REPO))
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from components.render import manifests, run_stack
    from contract.config import ConfigError

    try:
        objects = manifests(run_stack(stack_name, project))
    except ConfigError as exc:
        return fail(f"invalid stack config: {exc}")
    try:
        core: Any = client.CoreV1Api(config.new_client_from_config())  # type: ignore[no-untyped-call]
    except Exception as exc:  # the client raises several kinds; all mean "no cluster to reach"
        return fail(f"no Kubernetes credentials: {exc} (set KUBECONFIG)", 1)
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        namespace, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        for template in sts["spec"].get("volumeClaimTemplates", []):
            spec = template["spec"]
            for ordinal in range(sts["spec"].get("replicas", 1)):
                claim = f"{template['metadata']['name']}-{name}-{ordinal}"
                volume = f"{namespace}-{claim}"
                try:
                    existing = core.read_persistent_volume(volume)
                except ApiException as exc:
                    if exc.status != 404:
                        return fail(f"reading PersistentVolume {volume}: {exc.reason}", 1)
                    existing = None
                if existing is not None and existing.status.phase in ("Bound", "Available"):
                    print(f"{volume}: {existing.status.phase.lower()}, left as it is")
                    continue
                if existing is not None:  # Released by a destroyed stack: a new one for the claim
                    core.delete_persistent_volume(volume)
                    while True:
                        try:
                            core.read_persistent_volume(volume)
                        except ApiException:
                            break
                        time.sleep(0.2)
                body: dict[str, Any] = {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {
                        "name": volume,
                        "labels": {
                            "app.kubernetes.io/part-of": "portal",
                            "portal.dev/stack": stack_name,
                        },
                    },
                    "spec": {
                        "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                        "accessModes": spec["accessModes"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "claimRef": {"namespace": namespace, "name": claim},
                        "hostPath": {"path": f"{VOLUME_ROOT}/{namespace}/{claim}"},
                    },
                }
                if spec.get("storageClassName"):
                    body["spec"]["storageClassName"] = spec["storageClassName"]
                core.create_persistent_volume(body)
                print(f"{volume}: created for claim {namespace}/{claim}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
