"""A real local stack (Postgres, Redis, app instances, nginx, Prometheus...) per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.local.load import LoadGenerator
from rollout.local.stack import LocalStack
from rollout.local.target import local_target
from rollout.ports import Target
from tests.conftest import local_config_with, local_stack_file, running_local_stack

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
    return local_config_with(**{**FAST, **overrides})


@pytest.fixture(scope="module")
def stack_root() -> Iterator[Path]:
    with running_local_stack("portal-local-") as stack:
        yield stack.root


@pytest.fixture(scope="module")
def local_state(stack_root: Path) -> dict[str, Any]:
    return LocalStack(stack_root).load()


@pytest.fixture(scope="module")
def load(stack_root: Path, local_state: dict[str, Any]) -> Iterator[LoadGenerator]:
    credentials = LocalStack(stack_root).credentials()
    gen = LoadGenerator(local_state["nginx_url"], credentials, rate_per_s=40).start()
    yield gen
    gen.stop()


@pytest.fixture
def stack(stack_root: Path, local_state: dict[str, Any]) -> LocalStack:
    return LocalStack(stack_root)


@pytest.fixture
def target(stack: LocalStack) -> Target:
    return local_target(stack)


def fast_stack_file(root: Path, **overrides: Any):
    """The stack directory's ``Pulumi.local.yaml`` with the fast windows (and ``overrides``)."""
    return local_stack_file(root, **{**FAST, **overrides})
