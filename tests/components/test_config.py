"""Every config key refuses a bad value with one message naming the key, the value and what is
allowed; nothing is created from a bad config."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
import yaml

from app.keys import KeySet
from components.mockrun import run_program
from contract.config import ConfigError, parse_config, read_stack_values
from contract.names import AUTH_KEYS
from tests.conftest import REPO

BASE = read_stack_values(REPO / "Pulumi.prod.yaml")
GARBAGE = ["not", "this"]


def known_keys(values, path):
    """The keys the model accepts at ``path`` (learned from its own unknown-key message)."""
    probe = copy.deepcopy(values)
    node = probe
    for part in path[:-1]:
        node = node.setdefault(part, {})
    if path:
        node = node.setdefault(path[-1], {})
        if not isinstance(node, dict):
            return []
    node["zzz_unknown"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config(probe, "prod")
    message = str(info.value)
    assert "unknown key" in message, message
    return [k.strip() for k in message.split("known keys: ", 1)[1].split(",")]


def all_key_paths():
    paths = []
    for top in known_keys(BASE, ()):
        paths.append((top,))
        if top in (
            "app",
            "traffic",
            "postgres",
            "redis",
            "migrations",
            "observability",
            "slo",
            "canary",
            "alerts",
        ):
            for key in known_keys(BASE, (top,)):
                paths.append((top, key))
    return paths


PATHS = all_key_paths()


def test_the_model_has_the_keys_the_docs_list():
    tops = {p[0] for p in PATHS}
    documented = set(yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"])
    assert {f"portal:{t}" for t in tops} == documented
    assert len(PATHS) > 60


@pytest.mark.parametrize("path", PATHS, ids=".".join)
def test_a_bad_value_for_every_key_is_refused_naming_the_key_value_and_what_is_allowed(path):
    values = copy.deepcopy(BASE)
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = GARBAGE
    with pytest.raises(ConfigError) as info:
        parse_config(values, "prod")
    err = info.value
    key = "portal:" + ".".join(path)
    assert err.key.startswith(key), (err.key, key)
    message = str(err)
    assert message.startswith(err.key + ": ")
    assert '"not"' in message or "'not'" in message, message
    assert err.allowed and len(err.allowed) > 8, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("edit", "key", "allowed"),
    [
        (
            lambda v: v["canary"].update(
                steps=[{"weight": 50, "analysis": "1m"}, {"weight": 20, "analysis": "1m"}]
            ),
            "portal:canary.steps[1].weight",
            "must increase",
        ),
        (
            lambda v: v["canary"].update(steps=[{"weight": 120, "analysis": "1m"}]),
            "portal:canary.steps[0].weight",
            "percentage",
        ),
        (lambda v: v["app"].update(replicas=0), "portal:app.replicas", "whole number"),
        (lambda v: v["app"].update(replicass=3), "portal:app.replicass", "did you mean"),
        (
            lambda v: v["app"].update(traceSampleRatio=1.5),
            "portal:app.traceSampleRatio",
            "from 0 up to 1",
        ),
        (
            lambda v: v["app"].update(responseHeaders="off"),
            "portal:app.responseHeaders",
            "expected true or false",
        ),
        (lambda v: v["slo"].update(maxErrorRate=2), "portal:slo.maxErrorRate", ""),
        (
            lambda v: v["app"].update(authKeyIds=["k2", "k1", "k2"]),
            "portal:app.authKeyIds[2]",
            "each key id once",
        ),
        (lambda v: v["app"].update(authKeyIds=[]), "portal:app.authKeyIds", ""),
        (
            lambda v: v["observability"].update(grafanaImage="grafana/grafana:latest"),
            "portal:observability.grafanaImage",
            "tag",
        ),
        (lambda v: v["canary"].update(interval="10x"), "portal:canary.interval", "duration"),
        # the per-check confidence of the old gates became one alpha for the whole release
        (lambda v: v["canary"].update(confidence=0.99), "portal:canary.confidence", "alpha"),
        (lambda v: v["canary"].update(alpha=0.7), "portal:canary.alpha", "up to 0.5"),
    ],
)
def test_typical_mistakes_get_a_message_that_helps(edit, key, allowed):
    values = copy.deepcopy(BASE)
    edit(values)
    with pytest.raises(ConfigError) as info:
        parse_config(values, "prod")
    assert info.value.key == key
    assert allowed in str(info.value)


def test_a_bad_config_stops_the_program_before_any_resource_is_registered():
    values = {k: v for k, v in copy.deepcopy(BASE).items() if k != "sentryDsn"}
    values["canary"]["steps"] = [{"weight": 101, "analysis": "1m"}]
    with pytest.raises(Exception, match=re.escape("portal:canary.steps[0].weight")) as info:
        run_program("prod", values, {})
    run = getattr(info.value, "run", None)
    assert run is None or not run.resources


def test_every_optional_key_has_a_default_the_engine_applies_and_the_model_reads_as_unset():
    """The engine requires every key Pulumi.yaml declares without a default, and passes the
    default of one the stack leaves out: each optional key declares one that means "unset"."""
    declared = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    required = {key for key, spec in declared.items() if "default" not in spec}
    assert required == {"portal:app"}
    minimal = {"app": BASE["app"]}
    engine_defaults = {
        key.removeprefix("portal:"): spec["default"]
        for key, spec in declared.items()
        if "default" in spec
    }
    assert parse_config({**engine_defaults, **minimal}, "qa") == parse_config(minimal, "qa")
    unset = parse_config({**engine_defaults, **minimal}, "qa")
    assert (unset.environment, unset.namespace, unset.sentry_enabled) == ("qa", "portal-qa", False)


def test_the_trace_sample_ratio_and_the_response_headers_reach_both_tracks_of_the_service():
    values = copy.deepcopy(BASE)
    values["app"].update(traceSampleRatio=0.05, responseHeaders=False)
    run = run_program("prod", values, {})
    for name in ("portal-stable", "portal-canary"):
        container = run.get("Deployment", name).manifest()["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in container["containers"][0]["env"]}
        assert env["PORTAL_TRACE_SAMPLE_RATIO"] == "0.05", name
        assert env["PORTAL_RESPONSE_HEADERS"] == "off", name


def test_pulumi_yaml_documents_every_key_as_the_model_declares_it():
    from contract.config import docs

    documented = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    for key, entry in docs.pulumi_config().items():
        assert documented.get(key) == entry, f"{key} drifted: run python -m contract.config.docs"
    assert set(documented) == set(docs.pulumi_config())
    text = (REPO / "Pulumi.yaml").read_text()
    assert docs.updated(text) == text, "Pulumi.yaml is stale: run python -m contract.config.docs"


def test_key_ids_become_the_token_keys_newest_first():
    values = copy.deepcopy(BASE)
    values["app"]["authKeyIds"] = ["2026-12", "k1"]
    # 64 hex digits, as the real generator's 64 letters and digits: base64url of 48 bytes
    run = run_program("prod", values, {}, password=lambda n: hashlib.sha256(n.encode()).hexdigest())
    keys = KeySet.parse(run.get("Secret", "portal-env").manifest()["stringData"][AUTH_KEYS], "env")
    assert [kid for kid, _ in keys.keys] == ["2026-12", "k1"] and keys.signing_kid == "2026-12"
