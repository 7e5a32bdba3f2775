"""The Pulumi program run once per stack file under the Pulumi runtime's mocks."""

from __future__ import annotations

import pytest

from components.mockrun import ProgramRun
from components.render import run_stack
from contract.config import load_stack
from tests.conftest import REPO

STACKS = ("staging", "prod")


@pytest.fixture(scope="session")
def runs() -> dict[str, ProgramRun]:
    return {stack: run_stack(stack, REPO) for stack in STACKS}


@pytest.fixture(scope="session", params=STACKS)
def run(request, runs) -> ProgramRun:
    chosen: ProgramRun = runs[request.param]
    return chosen


@pytest.fixture(scope="session")
def configs():
    return {stack: load_stack(stack, REPO) for stack in STACKS}
