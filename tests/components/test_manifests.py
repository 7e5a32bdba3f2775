"""Every object `pulumi up` would create is a valid Kubernetes object and follows our policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from components.render import KUBERNETES_VERSION, InvalidManifest, manifests, validate
from tests.conftest import REPO


def test_every_captured_object_is_valid_against_the_kubernetes_schemas_strictly(run):
    objects = manifests(run)
    assert len(objects) >= 40
    for obj in objects:
        validate(yaml.safe_load(yaml.safe_dump(obj)), KUBERNETES_VERSION)


def test_strict_validation_catches_a_misspelt_field():
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "selektor": {"a": "b"}},
    }
    with pytest.raises(InvalidManifest, match="Service 'x'"):
        validate(bad)


def test_make_manifests_writes_a_valid_set_for_prod(tmp_path):
    out = tmp_path / "prod"
    result = subprocess.run(
        [sys.executable, "-m", "components.render", "--stack", "prod", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(out.rglob("*.yaml"))
    assert len(files) >= 40
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                validate(doc)
    assert "objects valid against Kubernetes" in result.stdout


def test_render_refuses_a_bad_stack_with_one_line(tmp_path):
    (tmp_path / "Pulumi.bad.yaml").write_text("config:\n  portal:app:\n    replicas: many\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.render",
            "--stack",
            "bad",
            "--out",
            str(tmp_path / "out"),
            "--project-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "portal:app" in result.stderr
    assert not (tmp_path / "out").exists()


def containers_of(obj):
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        spec = obj["spec"]["template"]["spec"]
        return spec, spec.get("containers", []) + spec.get("initContainers", [])
    return None, []


def test_policy_every_container_is_bounded_probed_unprivileged_and_pinned(run):
    for obj in manifests(run):
        spec, containers = containers_of(obj)
        if spec is None:
            continue
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert spec.get("securityContext", {}).get("runAsNonRoot") is True, where
        for c in containers:
            name = f"{where}/{c['name']}"
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{name}: resources"
            image = c["image"]
            tag = image.rsplit("/", 1)[-1]
            assert ":" in tag or "@sha256:" in image, f"{name}: untagged image {image}"
            assert not tag.endswith(":latest"), f"{name}: {image}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities"
            if obj["kind"] != "Job" and c.get("ports"):
                assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}: probes"


def test_policy_no_secret_value_outside_a_secret(run):
    values = set(run.passwords.values())
    for obj in manifests(run):
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        assert not any(v in text for v in values), f"{obj['kind']} {obj['metadata']['name']}"
        _, containers = containers_of(obj)
        for c in containers:
            where = f"{obj['kind']} {obj['metadata']['name']}/{c['name']}"
            assert "envFrom" not in c, where
            for item in c.get("env", []):
                name = item["name"]
                # A secret reaches a pod as a file (<NAME>_FILE names it), never as a variable.
                assert "secretKeyRef" not in item.get("valueFrom", {}), f"{where}: {name}"
                if any(k in name.upper() for k in ("PASSWORD", "TOKEN", "_AUTH", "DSN")):
                    assert name.endswith("_FILE"), f"{where}: {name}"


def test_policy_secrets_are_files_readable_by_the_pod_group_only(run):
    for obj in manifests(run):
        spec, _ = containers_of(obj)
        for volume in (spec or {}).get("volumes", []):
            if "secret" in volume:
                assert volume["secret"].get("defaultMode") == 0o440, obj["metadata"]["name"]
