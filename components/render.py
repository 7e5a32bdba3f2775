"""``make manifests STACK=<stack>``: the Kubernetes objects a stack deploys, as YAML for review.

Runs the Pulumi program offline (``components.mockrun``) with ``Pulumi.<stack>.yaml``, validates
every object against the Kubernetes schemas in strict mode (unknown fields are errors) and writes
one file per object, numbered in apply order. Generated passwords appear as placeholders
(``generated-at-deploy-time-<resource>``): the real ones exist only in the stack's state.

Exit status: 0 written, 1 an object failed validation (nothing written), 2 bad stack config.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pulumi
import yaml

from components.mockrun import PROJECT_DIR, ProgramRun, run_program
from components.schemas import KUBERNETES_VERSION, InvalidManifest, invalid, validate
from contract.config import SECRET_KEYS, ConfigError, read_stack_values, stack_file

__all__ = ["KUBERNETES_VERSION", "InvalidManifest", "main", "manifests", "run_stack", "validate"]


def _placeholders(value: Any, path: str) -> tuple[Any, bool]:
    """``value`` with each ``{secure: ...}`` inside replaced by a placeholder, and whether any
    was (the engine would hand the program the decrypted object and mark its key secret)."""
    if isinstance(value, dict) and set(value) == {"secure"}:
        return f"[{path}: secret]", True
    if isinstance(value, dict):
        found = False
        out = {}
        for k, v in value.items():
            out[k], inner = _placeholders(v, f"{path}.{k}")
            found = found or inner
        return out, found
    return value, False


def run_stack(stack: str, project_dir: Path = PROJECT_DIR) -> ProgramRun:
    """The program run with ``Pulumi.<stack>.yaml`` (secret values replaced by placeholders)."""
    values = read_stack_values(stack_file(stack, project_dir))
    secrets: dict[str, Any] = {key: f"[{key}: secret]" for key in SECRET_KEYS if key in values}
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECRET_KEYS:
            continue
        replaced, secret = _placeholders(value, f"portal:{key}")
        (secrets if secret else plain)[key] = replaced
    return run_program(stack, plain, secrets)


def manifests(run: ProgramRun) -> list[dict[str, Any]]:
    return [r.manifest() for r in run.kubernetes()]


def _ordered(value: Any) -> Any:
    """Stable, readable key order: ``name`` first, then alphabetical, all the way down."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (k != "name", k))
        return {k: _ordered(value[k]) for k in keys}
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    return value


def ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """``apiVersion``, ``kind``, ``metadata`` first; the rest alphabetical; nested keys sorted."""
    head = ("apiVersion", "kind", "metadata")
    rest = sorted(k for k in obj if k not in head)
    return {k: _ordered(obj[k]) for k in (*head, *rest) if k in obj}


def write(objects: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One ``NN-kind-name.yaml`` per object; stale files from an earlier render are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    written = []
    for i, obj in enumerate(objects, start=1):
        path = out / f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(ordered(obj), sort_keys=False, width=100))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m components.render",
        description="Write a stack's Kubernetes manifests for review.",
    )
    p.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--project-dir", type=Path, default=PROJECT_DIR)
    p.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = p.parse_args(argv)

    started = time.perf_counter()
    try:
        run = run_stack(args.stack, args.project_dir)
    except ConfigError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    except pulumi.RunError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    objects = manifests(run)
    errors = invalid(objects, args.kubernetes_version)
    if errors:
        for error in errors:
            print(f"render: invalid: {error}", file=sys.stderr)
        print(
            f"render: {len(errors)} of {len(objects)} objects are invalid; nothing written",
            file=sys.stderr,
        )
        return 1
    write(objects, args.out)
    kinds = Counter(obj["kind"] for obj in objects)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    print(
        f"{args.stack}: {len(objects)} objects valid against Kubernetes "
        f"{args.kubernetes_version} (strict) written to {args.out} ({summary}); "
        f"{len(run.resources)} resources in the program, mocked run {run.seconds:.2f}s, "
        f"total {time.perf_counter() - started:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
