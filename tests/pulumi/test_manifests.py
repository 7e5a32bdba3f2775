"""``make manifests`` renders through the real engine (``scripts/manifests.py``: the Kubernetes
provider's ``renderYamlToDirectory``, no cluster), and what it writes is, file for file, what
the mocked run of the program (``python -m components.render``, which the fast unit tests use)
writes: the mocks stand for the engine exactly, for both stacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=600
    )


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_the_engine_renders_what_the_mocked_run_renders(
    pulumi_toolchain: Any, tmp_path: Path, stack: str
) -> None:
    real = run("scripts/manifests.py", "--stack", stack, "--out", str(tmp_path / "engine"))
    assert real.returncode == 0, real.stderr
    assert "rendered by the engine, valid against Kubernetes" in real.stdout
    mocked = run("-m", "components.render", "--stack", stack, "--out", str(tmp_path / "mocks"))
    assert mocked.returncode == 0, mocked.stderr
    engine = {p.name: p.read_text() for p in (tmp_path / "engine").glob("*.yaml")}
    mocks = {p.name: p.read_text() for p in (tmp_path / "mocks").glob("*.yaml")}
    assert sorted(engine) == sorted(mocks)
    differing = [name for name in engine if engine[name] != mocks[name]]
    assert differing == [], differing
    secrets = "".join(text for name, text in engine.items() if "-secret-" in name)
    # the provider applies stringData as base64 data: shown decoded, passwords as placeholders
    assert "stringData" in secrets and "generated-at-deploy-time-postgres-password" in secrets


def test_a_bad_stack_value_is_refused_with_one_line_and_nothing_is_written(
    pulumi_toolchain: Any, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Pulumi.yaml", "__main__.py"):
        (project / name).write_text((REPO / name).read_text())
    good = (REPO / "Pulumi.staging.yaml").read_text()
    (project / "Pulumi.staging.yaml").write_text(good.replace("maxP95Ms: 500", "maxP95Ms: -3"))
    out = tmp_path / "out"
    proc = run(
        *("scripts/manifests.py", "--stack", "staging", "--out", str(out)),
        *("--project-dir", str(project)),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "manifests: invalid stack config: portal:slo.maxP95Ms: -3: expected a number from 1 up to "
        "60000"
    ]
    assert not out.exists()
