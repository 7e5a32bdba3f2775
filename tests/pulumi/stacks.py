"""A stack of this project in a copy of its own (``Pulumi.yaml``, its stack file,
``__main__.py``; the components come from the repository), run through ``scripts/stack.py``, the
command the README gives, with its own state and passphrase, against the control plane of the
``control_plane`` fixture."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contract.config import StackConfig, load_stack, stack_file
from tests.conftest import REPO
from tests.pulumi.conftest import toolchain_script


@dataclass
class Stack:
    """One stack of the project, in a copy of its own, run with the real CLI."""

    name: str
    project: Path
    state: Path
    env: dict[str, str]
    pulumi: Path
    runs: dict[str, float] = field(default_factory=dict)
    """Seconds each operation took (the last run of each)."""
    up: subprocess.CompletedProcess[str] | None = None

    @property
    def file(self) -> Path:
        return Path(stack_file(self.name, self.project))

    @property
    def cfg(self) -> StackConfig:
        return load_stack(self.name, self.project)

    def op(
        self, operation: str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``scripts/stack.py OPERATION --stack NAME`` (the README's command) on this copy."""
        argv = [sys.executable, str(REPO / "scripts" / "stack.py"), operation]
        argv += ["--stack", self.name, "--dir", str(self.project), "--state", str(self.state)]
        started = time.monotonic()
        proc = subprocess.run(
            [*argv, *extra],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        self.runs[operation] = time.monotonic() - started
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{operation} of {self.name} exited {proc.returncode}:\n"
                f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real ``pulumi`` CLI in the project folder (no program needed)."""
        proc = subprocess.run(
            [str(self.pulumi), *args, "--stack", self.name, "--non-interactive"],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"pulumi {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc

    def outputs(self, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "output", "--json", *(["--show-secrets"] if show_secrets else [])]
        result: dict[str, Any] = json.loads(self.cli(*args).stdout)
        return result

    def resources(self) -> list[dict[str, Any]]:
        exported = json.loads(self.cli("stack", "export", "--show-secrets").stdout)
        result: list[dict[str, Any]] = exported["deployment"].get("resources") or []
        return result

    def edit(self, change: Any) -> None:
        """Change the copy's ``Pulumi.<stack>.yaml`` (``change`` edits its ``config`` mapping)."""
        doc = yaml.safe_load(self.file.read_text())
        change(doc["config"])
        self.file.write_text(yaml.safe_dump(doc, sort_keys=False))


def project_stack(name: str, root: Path, control_plane: Any, toolchain: Any) -> Stack:
    """Stack ``name`` in a copy of the project under ``root`` (state beside it), its
    ``KUBECONFIG`` the control plane's; nothing is run yet."""
    project = root / "project"
    project.mkdir()
    for file in ("Pulumi.yaml", f"Pulumi.{name}.yaml", "__main__.py"):
        shutil.copy(REPO / file, project / file)
    env = toolchain_script().offline_env(toolchain, root / "state", secrets.token_hex(16))
    env["KUBECONFIG"] = str(control_plane.kubeconfig)
    env["PYTHONPATH"] = str(REPO)  # the program's components
    return Stack(name, project, root / "state", env, toolchain.pulumi)


def managed(stack: Stack) -> int:
    """Resources in the stack's state, its default providers left out (as the engine counts)."""
    return sum(not r["type"].startswith("pulumi:providers:") for r in stack.resources())


def created(proc: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"\+ (\d+) created", proc.stdout)
    assert found, proc.stdout[-3000:]
    return int(found.group(1))
