"""portalctl refuses bad input with one line naming the fault, exit 2, and changes nothing."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from tests.conftest import REPO

runner = CliRunner()


@pytest.fixture
def project(tmp_path):
    for name in ("Pulumi.yaml", "Pulumi.staging.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout + (result.stderr if result.stderr_bytes else "")


def write_steps(project, steps_yaml):
    text = (project / "Pulumi.staging.yaml").read_text()
    head, _, tail = text.partition("    steps:\n")
    rest = tail.split("    interval:", 1)[1]
    (project / "Pulumi.bad.yaml").write_text(
        head + "    steps:\n" + steps_yaml + "    interval:" + rest
    )


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            "      - weight: 50\n        analysis: 2m\n      - weight: 20\n        analysis: 2m\n",
            "portal:canary.steps",
        ),
        ("      - weight: 120\n        analysis: 2m\n", "portal:canary.steps"),
        ("      - weight: 10\n        analysis: soon\n", "analysis"),
    ],
)
def test_impossible_steps_are_refused_before_anything_changes(project, steps, message):
    write_steps(project, steps)
    before = sorted(p.name for p in project.rglob("*"))
    code, out = run(
        "release",
        "start",
        "--stack",
        "bad",
        "--image",
        "ghcr.io/acme/portal:2.0.0",
        "--project-dir",
        str(project),
    )
    assert code == 2, out
    assert message in out and "invalid stack config" in out
    assert len(out.strip().splitlines()) == 1
    assert sorted(p.name for p in project.rglob("*")) == before


def test_a_malformed_stack_file_is_refused(project):
    (project / "Pulumi.broken.yaml").write_text("config:\n  portal:app: [unclosed\n")
    code, out = run(
        "release", "start", "--stack", "broken", "--image", "r/p:1", "--project-dir", str(project)
    )
    assert code == 2 and "Pulumi.broken.yaml" in out


def test_an_unknown_stack_is_refused(project):
    code, out = run("release", "status", "--stack", "nope", "--project-dir", str(project))
    assert code == 2 and "Pulumi.nope.yaml" in out and "does not exist" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "staging", "--image", "ghcr.io/acme/portal"], "not an image reference"),
        (["--stack", "staging"], "--image IMAGE:TAG is required"),
        (["--local"], "--local needs --version"),
        (["--local", "--version", "2", "--stack", "staging"], "exclusive"),
        (["--local", "--version", "2", "--env", "lower=1"], "--env"),
        (
            ["--stack", "staging", "--image", "r/p:2", "--env", "PORTAL_FAULT_ERROR_RATE=1"],
            "local drills",
        ),
    ],
)
def test_bad_release_arguments_are_refused(project, args, message):
    code, out = run("release", "start", "--project-dir", str(project), *args)
    assert code == 2, out
    assert message in out


def test_local_commands_without_a_local_stack_say_how_to_start_one(tmp_path):
    code, out = run("release", "status", "--local", "--dir", str(tmp_path / "none"))
    assert code == 2 and "portalctl local up" in out
