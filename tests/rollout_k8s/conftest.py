"""The stand-in API server seeded with what `pulumi up -s staging` creates."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from components.render import manifests, run_stack
from contract.config import load_stack, parse_config, read_stack_values
from rollout.k8s import kubernetes_target
from rollout.k8s_standin import KIND_TO_PLURAL, KubeStandin
from rollout.ports import Target
from tests.conftest import REPO


@pytest.fixture(scope="session")
def staging_objects() -> list[dict[str, Any]]:
    return [m for m in manifests(run_stack("staging", REPO)) if m["kind"] in KIND_TO_PLURAL]


def config(**canary: Any):
    values = read_stack_values(REPO / "Pulumi.staging.yaml")
    values["canary"] = {**values.get("canary", {}), **canary}
    return parse_config(values, "staging")


@pytest.fixture
def standin(staging_objects) -> Iterator[KubeStandin]:
    server = KubeStandin().start()
    for obj in staging_objects:
        server.seed(copy.deepcopy(obj))
    yield server
    server.stop()


def api_client(standin: KubeStandin) -> client.ApiClient:
    conf = client.Configuration(host=standin.url)
    return client.ApiClient(conf)


@pytest.fixture
def cfg():
    return load_stack("staging", REPO)


@pytest.fixture
def target(standin, cfg) -> Target:
    return kubernetes_target(
        cfg, api_client(standin), poll_s=0.01, timeout_s=5, sleep=lambda s: None
    )
