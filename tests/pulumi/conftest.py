"""The Pulumi engine and providers built here (``scripts/toolchain.py``), run offline."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO, script


def toolchain_script() -> ModuleType:
    """``scripts/toolchain.py`` imported as a module."""
    return script("toolchain")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the engine and providers before the first test that needs them when they are
    missing: a first build takes longer than one test's timeout. Its progress is shown."""
    if not any("pulumi_toolchain" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    script = toolchain_script()
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        try:
            script.build()
        except script.ToolchainError as exc:
            raise pytest.UsageError(f"the Pulumi toolchain could not be built: {exc}") from exc


@pytest.fixture(scope="session")
def pulumi_toolchain() -> Any:
    """The built toolchain (``bin``, ``pulumi``, ``versions()``)."""
    return toolchain_script().build()


@dataclass
class Pulumi:
    """The real CLI in an offline environment of its own (state, backend, plugin home)."""

    toolchain: Any
    env: dict[str, str]
    state: Path

    def run(
        self, *args: str, cwd: Path, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.toolchain.pulumi), *args, "--non-interactive"],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pulumi {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def stack(
        self,
        operation: str,
        project: Path,
        stack: str,
        *extra: str,
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """``up``/``preview``/``refresh``/``destroy`` of the Python program in ``project``
        through the CLI, the Python SDK as language host: ``scripts/stack.py``, the command the
        README gives, with this fixture's state."""
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "stack.py"),
                operation,
                "--dir",
                str(project),
                "--stack",
                stack,
                "--state",
                str(self.state),
                *extra,
            ],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pulumi {operation} of {project} exited {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc


@pytest.fixture
def pulumi(pulumi_toolchain: Any, tmp_path: Path) -> Iterator[Pulumi]:
    state = tmp_path / "state"
    env = toolchain_script().offline_env(pulumi_toolchain, state, secrets.token_hex(16))
    env["PYTHONPATH"] = str(REPO)
    yield Pulumi(pulumi_toolchain, env, state)
