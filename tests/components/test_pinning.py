"""Images pinned by digest: the config takes ``name@sha256:...`` and ``name:tag@sha256:...``; an
object whose images all carry a digest pulls them only if missing and needs no scanner skip."""

from __future__ import annotations

import copy

import pytest

from components.mockrun import run_program
from components.render import manifests
from contract.config import ConfigError, parse_config, read_stack_values
from tests.conftest import REPO

DIGEST = "sha256:" + "ab" * 32


def values():
    return copy.deepcopy(read_stack_values(REPO / "Pulumi.staging.yaml"))


@pytest.mark.parametrize(
    "image",
    [f"prom/prometheus@{DIGEST}", f"prom/prometheus:v2.54.1@{DIGEST}", "prom/prometheus:v2.54.1"],
)
def test_an_image_pinned_by_tag_or_digest_is_accepted(image):
    v = values()
    v["observability"]["prometheusImage"] = image
    assert parse_config(v, "staging").observability.prometheus_image == image


@pytest.mark.parametrize(
    "image",
    ["prom/prometheus", "prom/prometheus:latest", "prom/prometheus@sha256:abc", "prom/x@md5:00"],
)
def test_an_unpinned_image_is_refused_with_its_key(image):
    v = values()
    v["observability"]["prometheusImage"] = image
    with pytest.raises(ConfigError, match=r"portal:observability\.prometheusImage.*digest"):
        parse_config(v, "staging")


def test_digest_pinned_images_are_pulled_if_missing_and_need_no_skip():
    v = values()
    v["postgres"] = {
        **v["postgres"],
        "image": f"postgres:16.4-alpine@{DIGEST}",
        "exporterImage": f"quay.io/prometheuscommunity/postgres-exporter@{DIGEST}",
    }
    run = run_program("staging", v, {})
    postgres = next(
        o
        for o in manifests(run)
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "postgres"
    )
    skips = postgres["metadata"]["annotations"]
    assert not any(s.startswith("CKV_K8S_43=") for s in skips.values()), skips
    containers = postgres["spec"]["template"]["spec"]["containers"]
    assert {c["imagePullPolicy"] for c in containers} == {"IfNotPresent"}
    assert postgres["metadata"]["labels"]["app.kubernetes.io/version"] == "16.4-alpine"
    redis = next(
        o for o in manifests(run) if o["metadata"]["name"] == "redis" and o["kind"] == "Deployment"
    )
    assert any(s.startswith("CKV_K8S_43=") for s in redis["metadata"]["annotations"].values())
    assert {c["imagePullPolicy"] for c in redis["spec"]["template"]["spec"]["containers"]} == {
        "Always"
    }
