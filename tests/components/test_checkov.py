"""checkov (``--framework kubernetes``, from PyPI, in ``.venv-scanner``) finds nothing to fail in
either stack's ``make manifests`` output; what it skips is a skip annotation on the object with a
reason, of at most five kinds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract import security
from tests.conftest import REPO

CHECKOV = REPO / ".venv-scanner" / "bin" / "checkov"
ACCEPTED = dict([security.UNPINNED_IMAGE, security.API_READER, security.POSTGRES_UID])
"""Check -> the one reason the objects give for skipping it."""


def scan(directory: Path) -> dict[str, Any]:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make deps` builds it"
    proc = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-2000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def render(stack: str, out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "components.render", "--stack", stack, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict[str, Any]]:
    return {
        stack: scan(render(stack, tmp_path_factory.mktemp(stack))) for stack in ("staging", "prod")
    }


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_checkov_fails_no_check_of_the_rendered_stack(reports, stack):
    report = reports[stack]
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']}" for c in report["results"].get("failed_checks", [])
    ]
    assert failed == []
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 900 and summary["resource_count"] >= 50, summary


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_every_skip_is_an_annotated_reason_of_at_most_five_kinds(reports, stack):
    skipped = reports[stack]["results"].get("skipped_checks", [])
    kinds = Counter(c["check_id"] for c in skipped)
    assert 0 < len(kinds) <= 5, kinds
    for check in skipped:
        assert ACCEPTED.get(check["check_id"]) == check["check_result"]["suppress_comment"], check
    # Only Prometheus and kube-state-metrics keep their ServiceAccount token.
    readers = {c["resource"].split(".")[-1] for c in skipped if c["check_id"] == "CKV_K8S_38"}
    assert readers == {"prometheus", "kube-state-metrics"}


def test_checkov_fails_a_secret_passed_as_an_environment_variable(tmp_path):
    """The scan can fail: a Deployment that reads a Secret through ``env`` is reported."""
    out = render("staging", tmp_path / "staging")
    path = next(out.glob("*-deployment-pushgateway.yaml"))
    obj = yaml.safe_load(path.read_text())
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}
    ]
    path.write_text(yaml.safe_dump(obj))
    failed = {c["check_id"] for c in scan(out)["results"].get("failed_checks", [])}
    assert failed == {"CKV_K8S_35"}
