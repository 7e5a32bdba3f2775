"""``make manifests STACK=<stack>``: the Kubernetes objects a stack deploys, rendered by the real
engine, as YAML for review.

    .venv/bin/python scripts/manifests.py --stack prod --out manifests/prod

Runs ``pulumi up`` of the program (``scripts/stack.py``: the engine and providers built here,
offline) on a throwaway copy of the stack: its config from ``Pulumi.<stack>.yaml`` plus
``kubernetes:renderYamlToDirectory``, with which the Kubernetes provider writes every object it
would apply to a folder instead of a cluster (no cluster is needed or touched), in a state and
passphrase of its own that are deleted afterwards. Every object is then validated against the
Kubernetes schemas in strict mode (unknown fields are errors) and written as one file, numbered
in apply order (by kind, then name, as ``components.render`` numbers them: the engine's own order
varies from run to run with its parallelism). Generated passwords appear as
placeholders (``generated-at-deploy-time-<resource>``), and what the program derives from them
(their SHA-256 in Redis's ACL file, their fingerprints in ``checksum/...`` annotations) as
derived from the placeholders: the real ones exist only in the stack's state; a secret value of
the stack file appears as ``[<key>: secret]``. The provider applies a Secret's ``stringData`` as
base64 ``data``; text values are shown decoded, as ``stringData``.

Exit status: 0 written, 1 the engine failed or an object is invalid (nothing written), 2 bad
usage or a bad stack config (the program's one line).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import stack as stack_runner  # scripts/stack.py, beside this file
import toolchain
import yaml
from pulumi import automation as auto

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.mockrun import KIND_ORDER  # noqa: E402
from components.render import write  # noqa: E402
from components.schemas import KUBERNETES_VERSION, invalid  # noqa: E402
from contract import access  # noqa: E402
from contract.config import SECRET_KEYS, ConfigError, read_stack_values  # noqa: E402

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"  # noqa: S105 - a type token
PLACEHOLDER = "generated-at-deploy-time-{}"


def fail(message: str, code: int) -> int:
    print(f"manifests: {message}", file=sys.stderr, flush=True)
    return code


def _replace(value: Any, replacements: dict[str, str]) -> Any:
    if isinstance(value, str):
        for secret, placeholder in replacements.items():
            value = value.replace(secret, placeholder)
        return value
    if isinstance(value, dict):
        return {k: _replace(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, replacements) for v in value]
    return value


def derived_too(passwords: dict[str, str]) -> dict[str, str]:
    """``passwords`` (generated value -> placeholder) followed by what the program derives from
    each: its SHA-256 (Redis's ACL file), then its fingerprint (``checksum/...`` annotations),
    mapped to the placeholder's; whole digests first, so a fingerprint never cuts one."""
    out = dict(passwords)
    out.update({access.sha256_hex(p): access.sha256_hex(q) for p, q in passwords.items()})
    out.update({access.fingerprint(p): access.fingerprint(q) for p, q in passwords.items()})
    return out


def _readable(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret as written: the provider applies ``stringData`` as base64 ``data``; text values
    are shown decoded, as ``stringData`` again, so a reviewer reads them (and the placeholders)."""
    if obj.get("kind") != "Secret" or not obj.get("data"):
        return obj
    try:
        text = {k: base64.b64decode(v, validate=True).decode() for k, v in obj["data"].items()}
    except (binascii.Error, UnicodeDecodeError):
        return obj  # binary data stays as it is
    readable = {k: v for k, v in obj.items() if k != "data"}
    readable["stringData"] = {**text, **(obj.get("stringData") or {})}
    return readable


def _plaintext(value: Any) -> str:
    """A secret output of ``pulumi stack export --show-secrets``."""
    if isinstance(value, dict) and "plaintext" in value:
        return str(json.loads(value["plaintext"]))
    return str(value)


def _file_of(obj: dict[str, Any]) -> str:
    """The name the Kubernetes provider gives a rendered object's file."""
    meta = obj["metadata"]
    api = obj["apiVersion"].replace("/", "_").replace(":", "_")
    return f"{api}-{obj['kind'].lower()}-{meta.get('namespace') or 'default'}-{meta['name']}.yaml"


def render(stack: str, project: Path, built: toolchain.Toolchain) -> list[dict[str, Any]]:
    """Every Kubernetes object of ``stack`` in apply order, passwords replaced."""
    values = read_stack_values(project / f"Pulumi.{stack}.yaml")  # raises ConfigError
    with tempfile.TemporaryDirectory(prefix=f"portal-manifests-{stack}-") as tmp:
        root = Path(tmp)
        work, rendered = root / "project", root / "rendered"
        work.mkdir()
        shutil.copy(project / "Pulumi.yaml", work / "Pulumi.yaml")
        config: dict[str, Any] = {
            f"portal:{key}": f"[{key}: secret]" if key in SECRET_KEYS else value
            for key, value in values.items()
        }
        config["kubernetes:renderYamlToDirectory"] = str(rendered)
        (work / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))
        env = toolchain.offline_env(built, root / "state", secrets.token_hex(16))
        saved = dict(os.environ)
        os.environ.update(env)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                stack_runner.run("up", stack, work, project / "__main__.py", built)
        except auto.CommandError as exc:
            raise RenderError(_engine_error(str(exc), log.getvalue())) from None
        finally:
            os.environ.clear()
            os.environ.update(saved)
        exported = subprocess.run(
            [str(built.pulumi), "stack", "export", "--show-secrets", "--stack", stack],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        resources = json.loads(exported.stdout)["deployment"]["resources"]
        passwords = derived_too(
            {
                _plaintext(r["outputs"]["result"]): PLACEHOLDER.format(r["urn"].rsplit("::", 1)[-1])
                for r in resources
                if r["type"] == RANDOM_PASSWORD
            }
        )
        objects = []
        for r in resources:
            if not r["type"].startswith("kubernetes:") or r["type"].startswith("kubernetes:yaml"):
                continue
            path = rendered / "1-manifest" / _file_of(r["outputs"])
            objects.append(_replace(_readable(yaml.safe_load(path.read_text())), passwords))
        rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
        return sorted(
            objects, key=lambda o: (rank.get(o["kind"], len(rank)), o["metadata"]["name"])
        )


class RenderError(Exception):
    """The engine failed: the program's own one-line error when it gave one."""


def _engine_error(error: str, output: str) -> str:
    for line in (output + "\n" + error).splitlines():
        text = line.strip().removeprefix("error:").strip()
        if text.startswith("invalid stack config:"):
            return text
    return error.strip().splitlines()[-1] if error.strip() else "pulumi up failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/manifests.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--project-dir", type=Path, default=REPO)
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    project = args.project_dir.resolve()
    if not (project / f"Pulumi.{args.stack}.yaml").is_file():
        return fail(f"{project / f'Pulumi.{args.stack}.yaml'} is missing", 2)
    started = time.perf_counter()
    try:
        built = toolchain.build()
    except toolchain.ToolchainError as exc:
        return fail(f"the Pulumi engine could not be built: {exc}", 1)
    try:
        objects = render(args.stack, project, built)
    except ConfigError as exc:
        return fail(f"invalid stack config: {exc}", 2)
    except RenderError as exc:
        message = str(exc)
        return fail(message, 2 if message.startswith("invalid stack config:") else 1)
    errors = invalid(objects, args.kubernetes_version)
    if errors:
        for error in errors:
            print(f"manifests: invalid: {error}", file=sys.stderr)
        return fail(f"{len(errors)} of {len(objects)} objects are invalid; nothing written", 1)
    write(objects, args.out)
    kinds = Counter(obj["kind"] for obj in objects)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    print(
        f"{args.stack}: {len(objects)} objects rendered by the engine, valid against Kubernetes "
        f"{args.kubernetes_version} (strict), written to {args.out} ({summary}) in "
        f"{time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
