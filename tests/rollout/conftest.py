"""A real local stack (Postgres, Redis, app instances, nginx, Prometheus...) per test module."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.local.load import LoadGenerator
from rollout.local.stack import LocalStack, local_config
from rollout.local.target import LocalTarget

FAST: dict[str, Any] = {
    "steps": [{"weight": 30, "analysis": "3s"}, {"weight": 100, "analysis": "3s"}],
    "interval": "1s",
    "settle": "1s",
    "minRequests": 10,
    "leaseTtl": "4s",
    "onInsufficientData": {"limit": "10s", "then": "fail"},
    "onProviderError": {"limit": "4s", "then": "abort"},
}


def fast_config(**overrides: Any):
    return local_config(**{**FAST, **overrides})


@pytest.fixture(scope="module")
def stack_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="portal-local-", dir="/tmp"))
    root.chmod(0o755)
    stack = LocalStack(root / "local")
    try:
        yield stack.root
    finally:
        stack.down(lambda m: None)
        if not os.environ.get("PORTAL_KEEP_TEST_SERVERS"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_state(stack_root: Path) -> dict[str, Any]:
    return LocalStack(stack_root).up(lambda m: None)


@pytest.fixture(scope="module")
def load(local_state: dict[str, Any]) -> Iterator[LoadGenerator]:
    gen = LoadGenerator(local_state["nginx_url"], rate_per_s=40).start()
    yield gen
    gen.stop()


@pytest.fixture
def target(stack_root: Path, local_state: dict[str, Any]) -> LocalTarget:
    return LocalTarget(LocalStack(stack_root))


def write_canary_overrides(root: Path, **overrides: Any) -> Path:
    path = root / "canary.json"
    path.write_text(json.dumps({**FAST, **overrides}))
    return path
