"""One real local stack (Postgres, Redis, app instances behind nginx, Prometheus with 1 s
scrapes, exporters) under steady load, shared by the runbook drills of this folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.local.load import LoadGenerator
from rollout.local.stack import LocalStack
from rollout.local.target import local_target
from rollout.ports import Target
from tests.conftest import running_local_stack

PROJECT_DIR = Path(__file__).resolve().parents[2]
PORTALCTL = [sys.executable, "-c", "from rollout.cli import main; main()"]


@pytest.fixture(scope="module")
def stack_root() -> Iterator[Path]:
    with running_local_stack("portal-runbooks-") as stack:
        yield stack.root


@pytest.fixture(scope="module")
def load(stack_root: Path) -> Iterator[LoadGenerator]:
    local = LocalStack(stack_root)
    gen = LoadGenerator(local.load()["nginx_url"], local.credentials(), rate_per_s=30).start()
    yield gen
    gen.stop()


@pytest.fixture
def stack(stack_root: Path, load: LoadGenerator) -> LocalStack:
    return LocalStack(stack_root)


@pytest.fixture
def target(stack: LocalStack) -> Iterator[Target]:
    t = local_target(stack)
    yield t
    t.workloads.rollback()  # no canary outlives its test


def run_runbook(root: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``portalctl runbook run NAME --dir ROOT ...`` as an operator would type it."""
    env: dict[str, Any] = {**os.environ, "COLUMNS": "250", "PORTALCTL_USER": "oncall"}
    env.pop("PORTAL_DATABASE_URL", None)
    return subprocess.run(
        [*PORTALCTL, "runbook", "run", name, "--dir", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
